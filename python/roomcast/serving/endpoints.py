"""The operational HTTP endpoints: GET /health for load balancers, GET /metrics for Prometheus.

`Endpoints` is an HTTP handler (see `roomcast.http`) that answers those two paths for one
helper and hands every other request to the application's handler.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from ..transport.http import HttpHandler, HttpRequest, HttpResponse
from ..transport.ports import Node
from .metrics import Exporter

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"


def health_response(helper: Node) -> HttpResponse:
    """200 `{"status":"ok"}`, or 503 with what is wrong (e.g. the broker reconnecting)."""
    ok, body = helper.health()
    return HttpResponse.json(body, 200 if ok else 503)


class Endpoints:
    """Answers /health and /metrics (each when enabled), then defers to `fallback`.

    Must be created inside the running event loop: the metrics exporter keeps timers, which
    stop with the helper's shutdown (or `close()`).
    """

    def __init__(
        self,
        helper: Node,
        fallback: HttpHandler | None = None,
        *,
        health: bool = True,
        metrics: bool = True,
    ) -> None:
        self.helper = helper
        self.fallback = fallback
        self.health = health
        self.exporter: Exporter | None = None
        if metrics:
            self.exporter = Exporter(helper)
            self.exporter.start()

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()

    def metrics_response(self) -> HttpResponse:
        assert self.exporter is not None
        return HttpResponse(200, self.exporter.render(), {"Content-Type": CONTENT_TYPE_LATEST})

    def __call__(self, request: HttpRequest) -> HttpResponse | None:
        if request.method == "GET":
            if self.health and request.path == HEALTH_PATH:
                return health_response(self.helper)
            if self.exporter is not None and request.path == METRICS_PATH:
                return self.metrics_response()
        return self.fallback(request) if self.fallback is not None else None
