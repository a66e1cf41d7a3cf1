"""The watcher's Prometheus metrics (``steelseg watch --metrics-port``), on loopback, in a registry of its own:
what ``deploy/prometheus/steelseg-alerts.yml`` and the Grafana dashboard in ``deploy/grafana/`` read."""

from __future__ import annotations

from steelseg.drift import DriftGauges, DriftMonitor

__all__ = ["WatchMetrics"]


class WatchMetrics:
    def __init__(self, port: int, monitor: DriftMonitor | None, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
        except ImportError as exc:
            from steelseg.errors import DataError

            raise DataError(f"--metrics-port needs prometheus-client: pip install 'steelseg[serve]' ({exc})") from None
        r = self.registry = CollectorRegistry()
        self.images = Counter("steelseg_watch_images_total", "Images predicted by steelseg watch", registry=r)
        self.quarantined = Counter("steelseg_watch_quarantined_total", "Files moved to quarantine", registry=r)
        self.defects = Counter("steelseg_watch_defects_total", "Images in which a class was found", ["class_name"],
                               registry=r)
        self.latency = Histogram("steelseg_watch_latency_seconds", "From a file being complete to its result row",
                                 buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.drift = DriftGauges(r, monitor)  # the same gauges as steelseg serve
        self.server, self.thread = start_http_server(port, addr=host, registry=r)

    def image(self, found: dict[str, bool], latency: float) -> None:
        self.images.inc()
        self.latency.observe(latency)
        for name, f in found.items():
            if f:
                self.defects.labels(name).inc()

    def close(self) -> None:
        self.server.shutdown()
