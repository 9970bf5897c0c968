"""Prometheus metrics. One registry per app instance, so several apps in one test process stay apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# (metric name, help, WriterStats attribute): the writer thread keeps the counts, a scrape reads them.
WRITER_COUNTERS = (
    ("scoreboard_db_group_commits", "Writer transactions committed", "transactions"),
    ("scoreboard_db_committed_jobs", "Write jobs committed", "jobs"),
    ("scoreboard_db_batched_jobs", "Write jobs committed set-wise by a batch handler", "handled_together"),
    ("scoreboard_db_batch_fallbacks", "Batch handler runs that failed and ran their jobs one by one", "fallbacks"),
)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("scoreboard_http_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("scoreboard_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.submissions = Counter("scoreboard_score_submissions", "Score submissions by outcome", ["outcome"],
                                   registry=r)
        self.ws_connections = Gauge("scoreboard_ws_connections", "Open WebSocket connections", registry=r)
        self.ws_frames = Counter("scoreboard_ws_frames_sent", "WebSocket frames sent", registry=r)
        self.ws_slow_closed = Counter("scoreboard_ws_slow_consumers_closed", "Connections closed 4008",
                                      registry=r)
        self._request_children: dict[tuple[str, int], tuple] = {}
        self._submission_children: dict[str, Counter] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request; the labelled children are looked up once per route and status."""
        children = self._request_children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_submission(self, outcome: str) -> None:
        child = self._submission_children.get(outcome)
        if child is None:
            child = self._submission_children[outcome] = self.submissions.labels(outcome)
        child.inc()

    def watch_writer(self, stats) -> None:
        """Export the database writer's own counts (store.db.WriterStats) at each scrape."""
        self.registry.register(_WriterCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WriterCollector:
    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        for name, text, attribute in WRITER_COUNTERS:
            yield CounterMetricFamily(name, text, value=getattr(self.stats, attribute))
