"""Prometheus metrics, one registry per app so several apps (tests, workers) never share counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine steps below 50 ms: the latency budget lives there, and p99 is read off these buckets.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry
    latency: Histogram
    requests: Counter
    model_info: Gauge
    fallbacks: Counter
    variants: Counter
    swaps: Counter
    events: Counter
    _model_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def create(cls) -> ServiceMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            latency=Histogram(
                "newsrec_request_latency_seconds",
                "Request latency by endpoint (route template)",
                ["method", "endpoint"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            requests=Counter(
                "newsrec_requests", "Requests by endpoint and status code", ["method", "endpoint", "status"],
                registry=registry,
            ),
            model_info=Gauge(
                "newsrec_model_info", "The model version serving each alias (value 1)",
                ["alias", "model_name", "version", "run_id"], registry=registry,
            ),
            fallbacks=Counter(
                "newsrec_fallbacks", "Recommendations that took a fallback path, by reason", ["reason"],
                registry=registry,
            ),
            variants=Counter(
                "newsrec_variant_requests", "Recommendation requests served by A/B variant", ["variant"],
                registry=registry,
            ),
            swaps=Counter("newsrec_model_swaps", "Model bundles swapped in, by alias", ["alias"], registry=registry),
            events=Counter("newsrec_events", "Click events recorded", registry=registry),
        )

    def set_model(self, alias: str, model_name: str, version: str | None, run_id: str | None) -> None:
        """Expose exactly one version per alias (the old label set is removed on a swap)."""
        old = self._model_labels.pop(alias, None)
        if old is not None:
            self.model_info.remove(*old)
        if version is not None:
            labels = (alias, model_name, str(version), run_id or "")
            self.model_info.labels(*labels).set(1)
            self._model_labels[alias] = labels


class PrometheusMiddleware:
    """Pure ASGI middleware (cheaper per request than BaseHTTPMiddleware) timing every HTTP request."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The route template, not the raw path: one series per endpoint, not one per user id.
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - start)
            self.metrics.requests.labels(method, endpoint, str(status["code"])).inc()
