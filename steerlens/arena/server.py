"""The steering arena's HTTP server: stdlib only, localhost by default.

`GET /` serves the page, `GET /static/<file>` its hand-written JS and CSS (package data, no CDN),
`GET /api/options` the model's layers, behaviours and limits, `GET /api/status` whether the model
is busy and how many hooks are attached to it. `POST /api/generate` takes a JSON
object, checks it with `Arena.parse_request` (a bad request gets HTTP 400 and `{"error": msg}`
before the model is touched) and then streams the run's events as newline-delimited JSON, one
line per event, flushed as it happens. A run that fails midway sends an `error` event. Requests
run in threads; the engine's lock serialises model use. Bound to a loopback address, the server
also refuses requests whose Host header is not a loopback name (DNS-rebinding guard) and only
accepts `application/json` POSTs.

Every request gets an answer, never a dropped connection or a traceback in the log:

- anything malformed gets a 4xx JSON `{"error": msg}` (a body that is not UTF-8 or not JSON, a
  missing, invalid, duplicated or oversized Content-Length, a body shorter than announced, chunked
  bodies, a bad request line, too many or too long headers, a method the arena does not serve);
- a request must arrive whole within `timeout` seconds (a total deadline, so a client that
  trickles bytes cannot stretch it); otherwise it gets 408 and the connection is closed (a
  connection on which nothing arrived is closed silently, as a browser's unused preconnection
  expects). Each write of the answer has the same limit, so a client that stops reading frees its
  thread too;
- a client that goes away while its request waits for the model is noticed (the socket is peeked
  between polls of the model lock) and the request is dropped without running the model; one that
  goes away mid-stream stops the run, which removes the hooks and frees the model;
- at most `max_connections` connections are served at once; the next one gets 503 at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import select
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from .engine import Arena, ArenaInputError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
MAX_BODY = 1 << 20
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 16
LINGER_S = 1.0  # after an early error answer, read and discard what the client still sends
LINGER_BYTES = 8 * MAX_BODY
REFUSE_WAIT_S = 0.05  # a refused connection: wait this long for its request before answering 503
_DIGITS = re.compile(r"[0-9]+")
_GONE = (ConnectionError, TimeoutError)  # reset, broken pipe, aborted, or a timed-out write


def check_host(host: str, allow_remote: bool) -> bool:
    """True when `host` is a loopback address; refuse anything else unless `allow_remote`.

    Args:
        host: the address to listen on.
        allow_remote: allow a non-loopback address (the caller should warn).

    Returns:
        True for a loopback address, False for an allowed remote one.

    Raises:
        ValueError: for a non-loopback address without `allow_remote`.
    """
    local = host in LOCAL_HOSTS
    if not local and not allow_remote:
        raise ValueError(
            f"Refusing to listen on {host!r}: the arena runs a model for anyone who can reach it. "
            f"Use one of {list(LOCAL_HOSTS)}, or pass --allow-remote to expose it on purpose."
        )
    return local


def _static(name: str) -> bytes:
    return resources.files("steerlens.arena").joinpath("static", name).read_bytes()


def _readable(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether `sock` has data, EOF or an error to read within `wait` seconds (no fd-size limit)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(wait * 1000))
    return bool(select.select([sock], [], [], wait)[0])


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client at the other end of `sock` has gone (closed, reset), without blocking.

    Peeks at the socket: EOF or an error means gone; pending bytes or nothing to read means the
    client is still there. A client that half-closes its side after sending counts as gone.

    Args:
        sock: a connected socket.

    Returns:
        True when the client has gone.
    """
    try:
        if not _readable(sock):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _json_response(status: int, reason: str, obj: Any, extra: str = "") -> bytes:
    body = json.dumps(obj).encode()
    return (f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"X-Content-Type-Options: nosniff\r\nConnection: close\r\n{extra}\r\n").encode() + body


class _DeadlineReader(io.RawIOBase):
    """The read side of a request socket with a total deadline: each read waits only until the
    deadline, so the whole request must arrive within the timeout however the bytes trickle in.
    `deadline = None` turns the deadline off (after the request has been read)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self.deadline: float | None = time.monotonic() + timeout
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            self._sock.settimeout(left)
        n = self._sock.recv_into(buf)
        self.received += n
        return n


class ArenaServer(ThreadingHTTPServer):
    """A threading HTTP server holding one `Arena`.

    Args:
        address: (host, port) to bind; an IPv6 host switches the address family.
        arena: the engine that runs requests.
        local_only: refuse requests whose Host header is not a loopback name.
        quiet: do not log each request to stderr.
        timeout: seconds a request has to arrive whole (request line, headers and body), and
            the limit on each write of the answer; past it the client gets 408 (while an answer
            is still possible) and the connection is closed.
        max_connections: connections served at once; one more gets 503 at once.

    Raises:
        ValueError: for a timeout that is not a positive number or a max_connections below 1.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], arena: Arena, *, local_only: bool = True,
                 quiet: bool = True, timeout: float = DEFAULT_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}.")
        self.arena = arena
        self.local_only = local_only
        self.quiet = quiet
        self.request_timeout = float(timeout)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stats_lock = threading.Lock()
        self.n_open = 0
        self.n_refused = 0
        self.n_timed_out = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ArenaHandler)

    @property
    def url(self) -> str:
        """The server's base URL, e.g. "http://127.0.0.1:8765/"."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def stats(self) -> dict[str, Any]:
        """The connection counters `/api/status` adds to the engine's status.

        Returns:
            A JSON-ready dict: connections (open now), max_connections, refused (503s) and
            timed_out (requests that did not arrive in time).
        """
        with self._stats_lock:
            return {"connections": self.n_open, "max_connections": self.max_connections,
                    "refused": self.n_refused, "timed_out": self.n_timed_out}

    def count_timeout(self) -> None:
        """Count a request that did not arrive within the timeout."""
        with self._stats_lock:
            self.n_timed_out += 1

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """Serve the connection in a thread if a slot is free, else answer 503 at once.

        Args:
            request: the accepted socket.
            client_address: the client's address.
        """
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._stats_lock:
            self.n_open += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release_slot()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        """Serve one connection (in its thread), then free its slot.

        Args:
            request: the accepted socket.
            client_address: the client's address.
        """
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        with self._stats_lock:
            self.n_open -= 1
        self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        """503 on the accepting thread: never blocks for long, starts no thread."""
        with self._stats_lock:
            self.n_refused += 1
        answer = _json_response(503, "Service Unavailable", {
            "error": f"The arena is busy: all {self.max_connections} connections are in use. "
                     f"Try again in a moment."}, "Retry-After: 1\r\n")
        try:
            # read what has arrived of the request, so that closing does not reset the connection
            if _readable(sock, REFUSE_WAIT_S):
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.recv(1 << 16)
            sock.setblocking(False)
            sock.sendall(answer)  # a few hundred bytes: fits the empty send buffer
        except OSError:
            pass
        self.shutdown_request(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an exception that escaped a handler: one line for a vanished client, else a traceback.

        Args:
            request: the socket.
            client_address: the client's address.
        """
        err = sys.exc_info()[1]
        if isinstance(err, _GONE):
            if not self.quiet:
                print(f"arena: connection from {client_address[0]} ended: "
                      f"{type(err).__name__}: {err}", file=sys.stderr)
            return
        super().handle_error(request, client_address)


class ArenaHandler(BaseHTTPRequestHandler):
    """Request handler: the page, its static files, `/api/options`, `/api/status` and
    `POST /api/generate` (streamed newline-delimited JSON events). Every error is answered as
    JSON `{"error": msg}`; see the module docstring for timeouts and disconnects.
    """
    server: ArenaServer
    server_version = "steerlens-arena"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        """Log a request line to stderr unless the server is quiet (stdlib hook).

        Args:
            format: the printf-style format string.
            *args (object): its arguments.
        """
        if not self.server.quiet:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ connection handling
    def setup(self) -> None:
        """Set up the connection: the socket timeout, and a reader with the request deadline."""
        self.timeout = self.server.request_timeout
        super().setup()
        self.rfile.close()  # the stdlib reader; closing it leaves the socket open
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)
        self._answered = False

    def finish(self) -> None:
        """Flush the answer, then linger: read and discard (bounded) what the client still sends,
        so that closing with unread bytes does not reset the connection and lose the answer.
        """
        super().finish()
        sock = self.connection
        try:
            if not _readable(sock):
                return
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + min(LINGER_S, self.timeout)
            total = 0
            while total < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
        except OSError:
            pass

    def handle_one_request(self) -> None:
        """Read and answer one request (the stdlib's, plus: every failure gets a JSON answer).

        A request that does not arrive within the timeout gets 408; a client that vanished is let
        go quietly; an unexpected failure (a bug) is logged with its traceback and answered 500.
        """
        try:
            self._handle_one()
        except TimeoutError:
            self.close_connection = True
            if not self._answered:  # reading the request timed out (a write timeout: just close)
                self.server.count_timeout()
                if not self._reader.received:  # an idle (pre)connection: close it silently
                    self.log_error("closed a connection idle for %g s", self.timeout)
                    return
                self.log_error("request timed out after %g s", self.timeout)
                self._error_if_possible(408, f"The request did not arrive within "
                                             f"{self.timeout:g} s; the connection is closed.")
        except ConnectionError:
            self.close_connection = True  # the client went away
        except Exception as err:  # noqa: BLE001 (a bug: log it, answer if we can, keep serving)
            self.close_connection = True
            traceback.print_exc(file=sys.stderr)
            self._error_if_possible(500, f"Internal error: {type(err).__name__}: {err}")

    def _handle_one(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.command = ""
            self.request_version = self.protocol_version
            self.send_error(414, "Request line too long")
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.raw_requestline.endswith(b"\n"):  # the client stopped mid-line
            self.requestline = self.command = ""
            self.request_version = self.protocol_version
            self.send_error(400, "Incomplete request line")
            return
        if not self.parse_request():
            return  # an error answer has been sent
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 requests are not supported; send HTTP/1.0 or 1.1")
            return
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        method()
        self.wfile.flush()

    def _error_if_possible(self, status: int, message: str) -> None:
        if self._answered:
            return
        if not getattr(self, "requestline", None):
            self.requestline = ""
        if not hasattr(self, "command"):
            self.command = ""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version
        with contextlib.suppress(OSError):
            self._json(status, {"error": message})

    def send_response(self, code: int, message: str | None = None) -> None:
        """Start the answer: from here on the socket timeout limits each write (stdlib hook).

        Args:
            code: the HTTP status.
            message: the reason phrase (None: the standard one).
        """
        self._answered = True
        self._reader.deadline = None
        self.connection.settimeout(self.timeout)
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer an error as JSON `{"error": msg}` and close (stdlib hook, used by its parser).

        Args:
            code: the HTTP status.
            message: a short description (None: the standard one for `code`).
            explain: a longer one (None: the standard one).
        """
        short, long = self.responses.get(code, ("Error", ""))
        text = message or short
        if explain or long:
            text = f"{text}: {explain or long}"
        self.log_error("code %d, message %s", code, text)
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version  # a malformed line is no HTTP/0.9 request
        self.close_connection = True
        self._json(code, {"error": text})

    # ------------------------------------------------------------------ helpers
    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None,
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _client_gone(self) -> bool:
        return peer_closed(self.connection)

    def _host_ok(self) -> bool:
        if not self.server.local_only:
            return True
        host = self.headers.get("Host", "")
        name = urlsplit(f"//{host}").hostname or ""
        if name in LOCAL_HOSTS:
            return True
        self._json(403, {"error": f"Host {host!r} refused: the arena only answers on localhost."})
        return False

    def _not_allowed(self, allow: str) -> None:
        self.close_connection = True
        self._json(405, {"error": f"Method {self.command} is not allowed here; use {allow}."},
                   {"Allow": allow})

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        """Serve the page, a static file, `/api/options` or `/api/status` (404 otherwise)."""
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, _static("index.html"), STATIC_FILES["index.html"])
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
            name = path[len("/static/"):]
            self._send(200, _static(name), STATIC_FILES[name])
        elif path == "/api/options":
            self._json(200, self.server.arena.options())
        elif path == "/api/status":
            self._json(200, {**self.server.arena.status(), **self.server.stats()})
        elif path == "/api/generate":
            self._not_allowed("POST")
        else:
            self._json(404, {"error": f"No such page: {path}"})

    def do_HEAD(self) -> None:  # noqa: N802 (stdlib name)
        """Answer 405: the arena serves GET and POST only."""
        self._not_allowed("GET, POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        """Check a `/api/generate` request and stream its events; errors answer 4xx with
        `{"error": msg}` before the model is touched.
        """
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        if path != "/api/generate":
            if path in ("/", "/index.html", "/api/options", "/api/status") or (
                    path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES):
                self._not_allowed("GET")
            else:
                self._json(404, {"error": f"No such endpoint: {self.path}"})
            return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype != "application/json":
            self._json(415, {"error": "POST a JSON object with Content-Type: application/json."})
            return
        payload = self._read_json()
        if payload is _ANSWERED:
            return
        try:
            req = self.server.arena.parse_request(payload)
        except ArenaInputError as err:
            self._json(400, {"error": str(err)})
            return
        self._stream(req)

    def _bad(self, status: int, message: str) -> object:
        self.close_connection = True
        self._json(status, {"error": message})
        return _ANSWERED

    def _read_json(self) -> Any:
        """The body decoded as JSON, or `_ANSWERED` after a 4xx answer saying what was wrong."""
        lengths = [v.strip() for v in self.headers.get_all("Content-Length", [])]
        if self.headers.get("Transfer-Encoding") is not None:
            if lengths:
                return self._bad(400, "Send either Content-Length or Transfer-Encoding, not both.")
            return self._bad(411, "Send the body with a Content-Length header; "
                                  "Transfer-Encoding is not supported.")
        if not lengths:
            return self._bad(411, "A Content-Length header is required.")
        if len(set(lengths)) > 1:
            return self._bad(400, f"Conflicting Content-Length headers: {lengths}.")
        if not _DIGITS.fullmatch(lengths[0]):
            return self._bad(400, f"Content-Length must be a non-negative integer, got "
                                  f"{lengths[0][:40]!r}.")
        if len(lengths[0]) > 18 or int(lengths[0]) > MAX_BODY:
            return self._bad(413, f"Request body too large ({lengths[0][:40]} bytes; limit "
                                  f"{MAX_BODY}).")
        length = int(lengths[0])
        body = self.rfile.read(length)  # a TimeoutError here becomes 408
        if len(body) < length:
            return self._bad(400, f"The body ended after {len(body)} of the {length} bytes its "
                                  f"Content-Length announced.")
        self._reader.deadline = None  # the request is in
        self.connection.settimeout(self.timeout)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return self._bad(400, f"The request body is not valid UTF-8 (byte {err.start}: "
                                  f"{body[err.start:err.start + 1]!r}); send JSON encoded as UTF-8.")
        try:
            payload = json.loads(text or "null")
            json.dumps(payload, ensure_ascii=False).encode("utf-8")  # no lone surrogates
        except json.JSONDecodeError as err:
            return self._bad(400, f"The request is not valid JSON: {err}.")
        except RecursionError:
            return self._bad(400, "The request JSON is nested too deeply.")
        except UnicodeEncodeError as err:
            return self._bad(400, f"The request contains an unpaired surrogate "
                                  f"({err.object[err.start:err.end]!r}); send valid Unicode text.")
        except ValueError as err:  # e.g. an integer with more digits than Python converts
            return self._bad(400, f"The request is not valid JSON: {err}.")
        return payload

    def _stream(self, req) -> None:
        events = self.server.arena.run(req, cancelled=self._client_gone)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()  # no Content-Length: the body ends when the connection closes
            while True:
                try:
                    event = next(events)
                except StopIteration:
                    break
                except ValueError as err:  # e.g. custom pairs the model cannot use
                    self._line({"type": "error", "message": str(err)})
                    break
                except Exception as err:  # noqa: BLE001 (report any failure in the page, keep serving)
                    traceback.print_exc(file=sys.stderr)
                    self._line({"type": "error", "message": f"{type(err).__name__}: {err}"})
                    break
                self._line(event)
                if self._client_gone():
                    break  # closing the events below stops the run, removes hooks, frees the model
        except _GONE:
            pass  # the client went away or stopped reading (a write timed out)
        finally:
            events.close()
            self.close_connection = True

    def _line(self, event: dict) -> None:
        self.wfile.write(json.dumps(event).encode() + b"\n")
        self.wfile.flush()


_ANSWERED = object()  # `_read_json`'s "an error answer has been sent"


def make_server(arena: Arena, host: str = "127.0.0.1", port: int = 8765, *,
                allow_remote: bool = False, quiet: bool = True, timeout: float = DEFAULT_TIMEOUT,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> ArenaServer:
    """An `ArenaServer` bound to (host, port); port 0 picks a free one.

    Args:
        arena: the engine that runs requests.
        host: the address to bind.
        port: the port (0: any free port).
        allow_remote: allow a non-loopback host.
        quiet: do not log each request.
        timeout: seconds a request has to arrive whole, and the limit on each write.
        max_connections: connections served at once (one more gets 503).

    Returns:
        The bound, not yet serving, server.

    Raises:
        ValueError: for a non-loopback host without `allow_remote`, or a bad timeout or limit.
    """
    local = check_host(host, allow_remote)
    return ArenaServer((host, port), arena, local_only=local, quiet=quiet, timeout=timeout,
                       max_connections=max_connections)


def start_in_thread(server: ArenaServer) -> threading.Thread:
    """Serve in a daemon thread (tests, screenshots); stop with `server.shutdown()`.

    Args:
        server: the server to run.

    Returns:
        The started thread.
    """
    thread = threading.Thread(target=server.serve_forever, name="steerlens-arena", daemon=True)
    thread.start()
    return thread


def serve(model_name: str, host: str = "127.0.0.1", port: int = 8765, device: str | None = None,
          *, allow_remote: bool = False) -> None:
    """Load `model_name`, then serve the arena until Ctrl-C.

    Args:
        model_name: a name `load_model` accepts.
        host: the address to bind (loopback unless `allow_remote`).
        port: the port.
        device: the device for the model (None: the default device).
        allow_remote: allow a non-loopback host, with a warning.

    Raises:
        ValueError: for a non-loopback host without `allow_remote`.
    """
    from ..backend import load_model

    local = check_host(host, allow_remote)
    model = load_model(model_name, device=device)
    server = make_server(Arena(model, model_name), host, port, allow_remote=allow_remote,
                         quiet=False)
    if not local:
        print(f"WARNING: the arena is listening on {host}, reachable from other machines; anyone "
              f"who can reach it can run the model.", file=sys.stderr)
    print(f"steerlens arena: {server.url}  (model {model_name}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
