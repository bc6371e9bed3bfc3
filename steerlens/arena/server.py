"""The steering arena's HTTP server: stdlib only, localhost by default.

`GET /` serves the page, `GET /static/<file>` its hand-written JS and CSS (package data, no CDN),
`GET /api/options` the model's layers, behaviours and limits, `GET /api/status` whether the model
is busy and how many hooks are attached to it. `POST /api/generate` takes a JSON
object, checks it with `Arena.parse_request` (a bad request gets HTTP 400 and `{"error": msg}`
before the model is touched) and then streams the run's events as newline-delimited JSON, one
line per event, flushed as it happens. A run that fails midway sends an `error` event; a client
that goes away makes the next write fail, which closes the event stream and so removes the hooks
and frees the model for the next request. Requests run in threads; the engine's lock serialises
model use. Bound to a loopback address, the server also refuses requests whose Host header is not
a loopback name (DNS-rebinding guard) and only accepts `application/json` POSTs.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
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


class ArenaServer(ThreadingHTTPServer):
    """A threading HTTP server holding one `Arena`.

    Args:
        address: (host, port) to bind; an IPv6 host switches the address family.
        arena: the engine that runs requests.
        local_only: refuse requests whose Host header is not a loopback name.
        quiet: do not log each request to stderr.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], arena: Arena, *, local_only: bool = True,
                 quiet: bool = True) -> None:
        self.arena = arena
        self.local_only = local_only
        self.quiet = quiet
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ArenaHandler)

    @property
    def url(self) -> str:
        """The server's base URL, e.g. "http://127.0.0.1:8765/"."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


class ArenaHandler(BaseHTTPRequestHandler):
    """Request handler: the page, its static files, `/api/options`, `/api/status` and
    `POST /api/generate` (streamed newline-delimited JSON events).
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

    # ------------------------------------------------------------------ helpers
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_ok(self) -> bool:
        if not self.server.local_only:
            return True
        host = self.headers.get("Host", "")
        name = urlsplit(f"//{host}").hostname or ""
        if name in LOCAL_HOSTS:
            return True
        self._json(403, {"error": f"Host {host!r} refused: the arena only answers on localhost."})
        return False

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
            self._json(200, self.server.arena.status())
        else:
            self._json(404, {"error": f"No such page: {path}"})

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        """Check a `/api/generate` request and stream its events; errors answer 4xx with
        `{"error": msg}` before the model is touched.
        """
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/api/generate":
            self._json(404, {"error": f"No such endpoint: {self.path}"})
            return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype != "application/json":
            self._json(415, {"error": "POST a JSON object with Content-Type: application/json."})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, {"error": "A Content-Length header is required."})
            return
        if not 0 <= length <= MAX_BODY:
            self._json(413, {"error": f"Request body too large (limit {MAX_BODY} bytes)."})
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
            req = self.server.arena.parse_request(payload)
        except json.JSONDecodeError as err:
            self._json(400, {"error": f"The request is not valid JSON: {err}."})
            return
        except ArenaInputError as err:
            self._json(400, {"error": str(err)})
            return
        self._stream(req)

    def _stream(self, req) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()  # no Content-Length: the body ends when the connection closes
        events = self.server.arena.run(req)
        try:
            try:
                for event in events:
                    self._line(event)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                events.close()  # removes hooks and frees the model before the next request
                return
            except ValueError as err:  # e.g. custom pairs the model cannot use
                self._line({"type": "error", "message": str(err)})
            except Exception as err:  # noqa: BLE001 (report any failure in the page, keep serving)
                traceback.print_exc(file=sys.stderr)
                self._line({"type": "error", "message": f"{type(err).__name__}: {err}"})
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass
        finally:
            events.close()
            self.close_connection = True

    def _line(self, event: dict) -> None:
        self.wfile.write(json.dumps(event).encode() + b"\n")
        self.wfile.flush()


def make_server(arena: Arena, host: str = "127.0.0.1", port: int = 8765, *,
                allow_remote: bool = False, quiet: bool = True) -> ArenaServer:
    """An `ArenaServer` bound to (host, port); port 0 picks a free one.

    Args:
        arena: the engine that runs requests.
        host: the address to bind.
        port: the port (0: any free port).
        allow_remote: allow a non-loopback host.
        quiet: do not log each request.

    Returns:
        The bound, not yet serving, server.

    Raises:
        ValueError: for a non-loopback host without `allow_remote`.
    """
    local = check_host(host, allow_remote)
    return ArenaServer((host, port), arena, local_only=local, quiet=quiet)


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
