"""The arena answers every request (issue 15): malformed requests get a 4xx JSON error, slow or
silent clients get 408 within the timeout, a client that leaves while queued never runs the model,
a client that stops reading frees the model, and connections beyond the limit get 503 at once.

Everything runs against a real server on 127.0.0.1 (a random port, a 1 s timeout, 4 connections)
with raw sockets, on the tiny random model. After every test no hook is attached to the model,
every server thread has finished, and the server's log (stderr, request lines included) holds no
traceback. The whole file takes well under a minute.
"""

from __future__ import annotations

import json
import math
import socket
import time

import pytest

from steerlens.arena.engine import Arena
from steerlens.arena.server import MAX_BODY, ArenaServer, make_server, peer_closed, start_in_thread
from steerlens.backend import runtime

TIMEOUT = 1.0
MAX_CONNECTIONS = 4
HOST = b"Host: 127.0.0.1\r\n"
GOOD = dict(behaviour="sentiment", layer=1, strengths="3", prompt="Hi", max_new_tokens=4)


@pytest.fixture(scope="module")
def arena(tiny):
    return Arena(tiny, "tiny-random")


@pytest.fixture(scope="module")
def server(arena):
    srv = make_server(arena, "127.0.0.1", 0, quiet=False, timeout=TIMEOUT,
                      max_connections=MAX_CONNECTIONS)
    start_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def settle(srv: ArenaServer, arena: Arena, limit: float = 5.0) -> None:
    """Wait until every connection's thread has finished and the model is free."""
    deadline = time.monotonic() + limit
    while (srv.n_open or arena.lock.locked()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.n_open == 0 and not arena.lock.locked()


@pytest.fixture(autouse=True)
def clean(server, arena, tiny, capfd):
    """After each test: no open connection, a free model with no hooks attached, and no traceback
    in the server's log (stderr, where it logs every request)."""
    yield
    settle(server, arena)
    assert runtime.attached_hook_count(tiny) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def connect(srv: ArenaServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", srv.server_address[1]))
    return sock


def post_bytes(body: bytes, *, length: int | bytes | None = None, extra: bytes = b"",
               ctype: bytes = b"application/json") -> bytes:
    """A raw POST /api/generate; `length=None` sends the body's true Content-Length."""
    length = str(len(body) if length is None else length) if not isinstance(length, bytes) else length
    head = b"POST /api/generate HTTP/1.1\r\n" + HOST + b"Content-Type: " + ctype + b"\r\n"
    if length != b"-":
        head += b"Content-Length: " + (length if isinstance(length, bytes) else length.encode())
        head += b"\r\n"
    return head + extra + b"\r\n" + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the answer, read until the server closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP answer: {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), lines[0]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def exchange(srv: ArenaServer, data: bytes, *, half_close: bool = False):
    """Send `data` on a fresh connection; (status, headers, body, seconds until closed)."""
    t0 = time.monotonic()
    with connect(srv) as sock:
        if data:
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        status, headers, body = read_response(sock)
    return status, headers, body, time.monotonic() - t0


def json_error(headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    return json.loads(body)["error"]


def get(srv: ArenaServer, path: str) -> dict:
    status, headers, body, _ = exchange(srv, b"GET " + path.encode() + b" HTTP/1.1\r\n" + HOST
                                        + b"\r\n")
    assert status == 200, body
    return json.loads(body)


# ---------------------------------------------------------------------------- malformed requests
def _good(**kw) -> bytes:
    return json.dumps({**GOOD, **kw}).encode()


MALFORMED = [  # (case, raw request, half-close after sending, status, words in the error)
    ("invalid UTF-8 in a string", post_bytes(b'{"prompt": "caf\xe9", "layer": 1}'), False, 400,
     "not valid UTF-8 (byte 15"),
    ("invalid UTF-8 body", post_bytes(b"\xff\xfe\xfa"), False, 400, "not valid UTF-8"),
    ("UTF-16 body", post_bytes(_good().decode().encode("utf-16")), False, 400, "UTF-8"),
    ("bad JSON", post_bytes(b"{not json"), False, 400, "not valid JSON"),
    ("JSON nested 200k deep", post_bytes(b"[" * 200_000), False, 400, "nested too deeply"),
    ("a 5000-digit integer", post_bytes(b'{"layer": ' + b"9" * 5000 + b"}"), False, 400,
     "not valid JSON"),
    ("a lone surrogate", post_bytes(_good(prompt="\ud800")), False, 400, "unpaired surrogate"),
    ("a JSON array", post_bytes(b"[1, 2]"), False, 400, "JSON object"),
    ("an empty body", post_bytes(b""), False, 400, "JSON object"),
    ("strengths as an object", post_bytes(_good(strengths={"a": 1})), False, 400, "Strengths"),
    ("layer as a list", post_bytes(_good(layer=[1])), False, 400, "Layer must be an integer"),
    ("prompt as a number", post_bytes(_good(prompt=5)), False, 400, "prompt"),
    ("pairs as a number", post_bytes(_good(behaviour="custom", pairs=5)), False, 400,
     "Custom pairs must be text"),
    ("no Content-Length", post_bytes(_good(), length=b"-"), True, 411, "Content-Length"),
    ("Content-Length 'abc'", post_bytes(_good(), length=b"abc"), False, 400,
     "non-negative integer"),
    ("Content-Length '1_0'", post_bytes(_good(), length=b"1_0"), False, 400,
     "non-negative integer"),
    ("Content-Length negative", post_bytes(_good(), length=-5), False, 400, "non-negative integer"),
    ("conflicting Content-Lengths", post_bytes(_good(), extra=b"Content-Length: 3\r\n"), False, 400,
     "Conflicting Content-Length"),
    ("Transfer-Encoding chunked", post_bytes(b"5\r\nhello\r\n0\r\n\r\n", length=b"-",
                                             extra=b"Transfer-Encoding: chunked\r\n"), True, 411,
     "Transfer-Encoding is not supported"),
    ("Content-Length 10 MiB, no body", post_bytes(b"", length=10 << 20), False, 413, "too large"),
    ("Content-Length with 30 digits", post_bytes(b"", length=b"9" * 30), False, 413, "too large"),
    ("a 2 MiB body", post_bytes(b"x" * (2 * MAX_BODY)), False, 413, "too large"),
    ("body shorter than announced", post_bytes(_good()[:10], length=len(_good())), True, 400,
     "body ended after 10 of the"),
    ("wrong Content-Type", post_bytes(_good(), ctype=b"text/plain"), False, 415, "application/json"),
    ("no Host header", b"POST /api/generate HTTP/1.0\r\nContent-Type: application/json\r\n"
     b"Content-Length: 2\r\n\r\n{}", False, 403, "localhost"),
    ("a foreign Host", post_bytes(_good()).replace(HOST, b"Host: evil.example\r\n"), False, 403,
     "localhost"),
    ("garbage request line", b"HELLO\r\n\r\n", False, 400, "Bad request syntax"),
    ("request line cut off", b"GET /api/sta", True, 400, "Incomplete request line"),
    ("HTTP/0.9 request", b"GET /\r\n\r\n", False, 400, "HTTP/0.9"),
    ("HTTP/2.0 request", b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", False, 505, "HTTP version"),
    ("bad HTTP version", b"GET / HTTP/x.y\r\n" + HOST + b"\r\n", False, 400, "Bad request version"),
    ("unknown method", b"BREW / HTTP/1.1\r\n" + HOST + b"\r\n", False, 501, "BREW"),
    ("PUT", b"PUT /api/generate HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\n\r\n{}", False, 405,
     "use GET, POST"),
    ("GET /api/generate", b"GET /api/generate HTTP/1.1\r\n" + HOST + b"\r\n", False, 405,
     "use POST"),
    ("POST /api/status", b"POST /api/status HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n",
     False, 405, "use GET"),
    ("POST elsewhere", b"POST /nope HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n", False, 404,
     "No such endpoint"),
    ("a 70 kB request line", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", False, 414,
     "too long"),
    ("a 70 kB header", b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", False, 431,
     "Line too long"),
    ("200 headers", b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", False, 431,
     "Too many headers"),
]


@pytest.mark.parametrize("case,data,half_close,status,words", MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_malformed_request_gets_json_error(server, arena, case, data, half_close, status, words):
    runs = arena.n_runs
    got, headers, body, seconds = exchange(server, data, half_close=half_close)
    assert got == status, body
    assert words in json_error(headers, body)
    assert headers["connection"] == "close"
    assert seconds < TIMEOUT  # answered at once, not after a timeout
    assert arena.n_runs == runs  # refused before the model ran


def test_head_gets_405_without_body(server):
    status, headers, body, _ = exchange(server, b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert status == 405 and headers["allow"] == "GET, POST" and body == b""


def test_trailing_bytes_after_the_body_do_not_lose_the_answer(server, arena):
    """Bytes past Content-Length are read and discarded, so the close does not reset the stream."""
    status, headers, body, seconds = exchange(server, post_bytes(_good() + b"junk" * 5000,
                                                                 length=len(_good())))
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert json.loads(body.splitlines()[-1])["type"] == "done"
    assert seconds < 5


# ---------------------------------------------------------------------------- timeouts
def _trickle(sock: socket.socket) -> None:
    sock.sendall(b"GET /api/status HTTP/1.1\r\n")
    for _ in range(15):  # a header every 0.2 s: each read is quick, the whole request is not
        try:
            sock.sendall(b"X-Slow: yes\r\n")
        except OSError:
            return
        time.sleep(0.2)


SLOW = [  # (case, what the client sends before going silent)
    ("part of the request line", b"GET /api/sta"),
    ("part of the headers", b"GET /api/status HTTP/1.1\r\n" + HOST),
    ("headers and part of the body", post_bytes(_good())[:-5]),
    ("headers of a POST without its body", post_bytes(b"", length=len(_good()))),
    ("a header every 0.2 s", None),
]


@pytest.mark.parametrize("case,data", SLOW, ids=[c[0] for c in SLOW])
def test_slow_client_gets_408_within_the_timeout(server, arena, case, data):
    timed_out = server.n_timed_out
    t0 = time.monotonic()
    with connect(server) as sock:
        if data is None:
            _trickle(sock)
        elif data:
            sock.sendall(data)
        status, headers, body = read_response(sock)
    seconds = time.monotonic() - t0
    assert status == 408 and f"within {TIMEOUT:g} s" in json_error(headers, body)
    assert TIMEOUT * 0.9 < seconds < TIMEOUT + 2.0  # a total deadline, even for the trickler
    assert server.n_timed_out == timed_out + 1
    assert not arena.lock.locked()


def test_idle_connection_is_closed_silently_within_the_timeout(server):
    """Nothing sent (e.g. a browser's unused preconnection): closed, no answer, thread freed."""
    timed_out = server.n_timed_out
    t0 = time.monotonic()
    with connect(server) as sock:
        assert sock.recv(1024) == b""
    assert TIMEOUT * 0.9 < time.monotonic() - t0 < TIMEOUT + 2.0
    assert server.n_timed_out == timed_out + 1


def test_client_that_stops_reading_frees_the_model(arena):
    """Each write of the stream has the timeout too: a client that stops reading (its buffers
    full) has its run stopped and the model freed, instead of holding the server forever."""

    class SmallBuffers(ArenaServer):
        def process_request(self, request, client_address):
            request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            super().process_request(request, client_address)

    srv = SmallBuffers(("127.0.0.1", 0), arena, quiet=False, timeout=TIMEOUT)
    start_in_thread(srv)
    try:
        aborted, runs = arena.n_aborted, arena.n_runs
        body = _good(strengths="3, -3, 6, -6", max_new_tokens=128, prompt="Once upon a time")
        t0 = time.monotonic()
        with connect(srv, rcvbuf=4096) as sock:
            sock.sendall(post_bytes(body))
            assert b" 200 " in sock.recv(64)  # then never read again
            deadline = time.monotonic() + 20
            while arena.n_aborted == aborted and time.monotonic() < deadline:
                time.sleep(0.05)
            assert arena.n_aborted == aborted + 1 and arena.n_runs == runs + 1
            assert time.monotonic() - t0 < 15
        settle(srv, arena)
    finally:
        srv.shutdown()
        srv.server_close()
    assert runtime.attached_hook_count(arena.model) == 0


# ---------------------------------------------------------------------------- queued clients
def _queued(srv: ArenaServer) -> tuple[socket.socket, object]:
    """A connection whose POST has been answered with 200 and a "queued" event."""
    sock = connect(srv)
    sock.sendall(post_bytes(_good()))
    stream = sock.makefile("rb")
    assert b" 200 " in stream.readline()
    while stream.readline().strip():  # headers
        pass
    assert json.loads(stream.readline())["type"] == "queued"
    return sock, stream


def test_client_leaving_while_queued_never_runs_the_model(server, arena):
    dropped, runs, aborted = arena.n_dropped, arena.n_runs, arena.n_aborted
    arena.lock.acquire()  # another user's run holds the model
    try:
        leaver, leaver_stream = _queued(server)
        stayer, stayer_stream = _queued(server)
        leaver_stream.close()
        leaver.close()  # the user closed the tab while waiting
        deadline = time.monotonic() + 5
        while arena.n_dropped == dropped and time.monotonic() < deadline:
            time.sleep(0.02)
        assert arena.n_dropped == dropped + 1  # noticed while still queued
        assert arena.n_runs == runs
    finally:
        arena.lock.release()
    with stayer, stayer_stream:  # the one still waiting runs, exactly once
        events = [json.loads(line) for line in stayer_stream.read().splitlines()]
    assert events[-1]["type"] == "done"
    assert (arena.n_runs, arena.n_dropped, arena.n_aborted) == (runs + 1, dropped + 1, aborted)
    assert get(server, "/api/status")["dropped"] == arena.n_dropped


def test_client_leaving_mid_stream_stops_the_run(server, arena):
    aborted, runs = arena.n_aborted, arena.n_runs
    with connect(server) as sock:
        sock.sendall(post_bytes(_good(max_new_tokens=120, strengths="3, -3, 6, -6")))
        stream = sock.makefile("rb")
        assert b" 200 " in stream.readline()
        while stream.readline().strip():
            pass
        while json.loads(stream.readline())["type"] != "step":
            pass
        stream.close()
    deadline = time.monotonic() + 10
    while arena.n_aborted == aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert arena.n_aborted == aborted + 1 and arena.n_runs == runs + 1


# ---------------------------------------------------------------------------- connection limit
def test_connections_beyond_the_limit_get_503_at_once(server, arena):
    refused = server.n_refused
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 5
        while server.n_open < MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.n_open == MAX_CONNECTIONS
        for _ in range(2):
            status, headers, body, seconds = exchange(
                server, b"GET /api/status HTTP/1.1\r\n" + HOST + b"\r\n")
            assert status == 503 and "all 4 connections are in use" in json_error(headers, body)
            assert headers["retry-after"] == "1" and seconds < 0.5
    finally:
        for sock in held:
            sock.close()
    settle(server, arena)
    state = get(server, "/api/status")  # and the server serves again
    assert state["refused"] == refused + 2 and state["max_connections"] == MAX_CONNECTIONS
    assert state["hooks_attached"] == 0 and not state["busy"]


# ---------------------------------------------------------------------------- the rest
def test_good_request_still_streams(server, arena):
    status, headers, body, _ = exchange(server, post_bytes(_good()))
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    events = [json.loads(line) for line in body.splitlines()]
    assert [e["type"] for e in events[:3]] == ["vector", "lens", "start"]
    assert events[-1]["type"] == "done"


@pytest.mark.parametrize("kw,message", [
    (dict(timeout=0), "timeout"), (dict(timeout=-1.0), "timeout"), (dict(timeout=math.nan), "timeout"),
    (dict(timeout=math.inf), "timeout"), (dict(timeout=True), "timeout"),
    (dict(timeout="10"), "timeout"), (dict(max_connections=0), "max_connections"),
    (dict(max_connections=2.5), "max_connections"),
])
def test_server_settings_are_checked(arena, kw, message):
    # TypeError: the suite's runtime type checker refuses a wrong type before our own check
    with pytest.raises((ValueError, TypeError), match=message):
        make_server(arena, "127.0.0.1", 0, **kw)


def test_peer_closed():
    a, b = socket.socketpair()
    with a, b:
        assert not peer_closed(a)  # connected, nothing to read
        b.sendall(b"more")
        assert not peer_closed(a)  # bytes pending: still there
        assert a.recv(4) == b"more"
        b.close()
        assert peer_closed(a)  # EOF
