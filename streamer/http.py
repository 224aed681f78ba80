"""A tiny HTTP server for Prometheus: ``/metrics`` from a given registry, ``/healthz`` for probes.

``/healthz`` answers 503 until `MetricsServer.ready` is set (model loaded, transport connected), then 200.
Binds 127.0.0.1 unless told otherwise; port 0 picks a free port (read it back from `.port`).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamer.config import DEFAULT_METRICS_HOST as DEFAULT_HOST


class MetricsServer:
    """Serves the registry in a daemon thread. Use as a context manager or call start()/close()."""

    def __init__(self, registry: CollectorRegistry, host: str = DEFAULT_HOST, port: int = 0):
        self.registry = registry
        self.ready = threading.Event()
        self._host = host
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the metrics server is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._host if ":" not in self._host else f"[{self._host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> "MetricsServer":
        """Bind and serve; raises OSError when the address is taken."""
        self._httpd = ThreadingHTTPServer((self._host, self._port), _handler(self.registry, self.ready))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "MetricsServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.close()


def _handler(registry: CollectorRegistry, ready: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                if ready.is_set():
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                else:
                    self._send(503, b"starting\n", "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: no access log on stderr
            pass

    return Handler
