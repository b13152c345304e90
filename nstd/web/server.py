"""The endpoint itself: a small threaded HTTP server, read-only, with bounded threads and
timeouts so that a slow or hostile client cannot stall the daemon.

    /metrics   Prometheus's text format, through prometheus_client
    /healthz   the process and its loops are alive: 200 or 503, one line of JSON
    /readyz    the journal answers, a worker is alive and not paused, the folders can be
               written: 200 or 503, one line of JSON
    /          the live dashboard (nstd/web/dashboard.py), with /api/status and
               /api/thumb/ID that its page fetches
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from nstd.log import get

if TYPE_CHECKING:
    from nstd.web.dashboard import Dashboard

log = get("nstd.web")

MAX_CLIENTS = 8  # requests served at once; more are answered 503 at once
TIMEOUT = 5.0  # seconds a client may take to send its request


class Probe:
    """What the endpoint asks the daemon: a check returns (ok, reason)."""

    def __init__(self, healthy: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]]):
        self.healthy, self.ready = healthy, ready


class Endpoint:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, probe: Probe, token: str | None,
                 on_stop: Callable[[], None] = lambda: None, dashboard: Dashboard | None = None):
        handler = type("Handler", (_Handler,), {"registry": registry, "probe": probe, "token": token,
                                                "dashboard": dashboard})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (_BoundedServer,), {"address_family": family})
        self.server = server_class((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="nstd-http", daemon=True)
        self.on_stop = on_stop

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> "Endpoint":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.on_stop()


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        pass  # a client that went away mid-request is its own business, not a traceback


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    probe: Probe
    token: str | None
    dashboard: Dashboard | None
    timeout = TIMEOUT
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # a request line too broken to parse still gets a status line
    server_version = "nstd"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._trusted_host():
            return self._send(403, "application/json", one_line(False, "this endpoint answers to a loopback name "
                                                                       "only (localhost, 127.0.0.1, [::1])"))
        page = self.dashboard.page(path) if self.dashboard is not None else None
        if page is not None:  # the page's own files, the same for everyone: see dashboard.py
            return self._send(200, *page)
        if not self._authorised():
            return self._send(401, "application/json", one_line(False, "a bearer token is required"),
                              {"WWW-Authenticate": "Bearer"})
        if path == "/metrics":
            try:
                body = generate_latest(self.registry)
            except Exception as e:  # noqa: BLE001 - a journal that cannot be read: 503, one line
                return self._send(503, "application/json", one_line(False, f"{type(e).__name__}: {e}"))
            return self._send(200, CONTENT_TYPE_LATEST, body)
        if path in ("/healthz", "/readyz"):
            ok, reason = (self.probe.healthy if path == "/healthz" else self.probe.ready)()
            return self._send(200 if ok else 503, "application/json", one_line(ok, reason))
        if self.dashboard is not None and path.startswith("/api/"):
            return self._send(*self.dashboard.answer(path))
        self._send(404, "application/json",
                   one_line(False, "no such page; there are /, /metrics, /healthz and /readyz"))

    def do_HEAD(self) -> None:
        self._send(405, "application/json", one_line(False, "only GET"), {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own refusals (a request line too long, a bad version) as one line."""
        self.close_connection = True
        self._send(code, "application/json", one_line(False, message or self.responses.get(code, ("",))[0]))

    def _trusted_host(self) -> bool:
        """Without a token, the endpoint is on loopback and trusts whoever can reach it: a
        browser can be made to reach it under another name (DNS rebinding), so a request
        must name a loopback host, as every local client does."""
        if self.token is not None:
            return True
        host = self.headers.get("Host")
        if host is None:
            return True  # HTTP/1.0 clients such as probes; a browser always sends it
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _authorised(self) -> bool:
        if self.token is None:
            return True
        given = self.headers.get("Authorization", "")
        # As bytes: compare_digest refuses str with characters past ASCII, which a header can hold.
        return given.startswith("Bearer ") and hmac.compare_digest(
            given[7:].strip().encode("utf-8", "surrogateescape"), self.token.encode())

    def _send(self, code: int, kind: str, body: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def log_message(self, format, *args) -> None:
        pass  # requests are not worth a log line each; refusals are answered, not logged


def one_line(ok: bool, reason: str) -> bytes:
    return (json.dumps({"ok": ok, "reason": reason}) + "\n").encode()
