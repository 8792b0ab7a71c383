"""The HTTP endpoint of [metrics] listen: GET /metrics in Prometheus' text format, served by a thread of the daemon.

CPU: the daemon starts this thread after cpu.pin(), so it inherits the milter's one CPU (cpu.py). That is the
choice, not an accident: a scrape runs Python and takes the GIL like every milter thread, and from another CPU it
would make the lock bounce between CPUs, the very cost the pinning removes. Prometheus scrapes every 15 to 60
seconds and a scrape takes about a millisecond, so sharing the CPU with the milter costs it nothing measurable.

Each request gets a short-lived daemon thread (prometheus_client's own server does the same) with a socket
timeout, so a client that connects and sends nothing cannot hold a thread for long.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

PATH = "/metrics"
REQUEST_TIMEOUT = 10.0  # seconds a scrape connection may sit idle


def split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 9101) from "127.0.0.1:9101", ("::1", 9101) from "[::1]:9101" (config.parse_listen's forms)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format, *args) -> None:
        """wsgiref writes every request to stderr, which is our log: a scrape is not worth a line."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress must not hold up the daemon's exit


class _Server6(_Server):
    address_family = socket.AF_INET6


def _app(registry: CollectorRegistry):
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"authmilter: the metrics are at {PATH}\n".encode()]
        return metrics_app(environ, start_response)

    return app


class MetricsServer:
    """Listens as soon as it is made (so a busy port fails the start-up, as the milter socket does); serves
    once start() is called; stop() closes the socket."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, port = split_listen(listen)
        server_class = _Server6 if ":" in host else _Server
        self._httpd = make_server(host, port, _app(registry), server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()  # waits for serve_forever to return (it polls every 0.5 s)
        self._httpd.server_close()
