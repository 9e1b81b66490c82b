"""Every metric spegel-py exports, built on an injected ``CollectorRegistry``.

One place for names and labels (the HTTP ones are Spegel's, which users' dashboards query);
components receive a :class:`Metrics` and never touch the global registry, so each test gets a
fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Response sizes span JSON errors (100 B) to layers (GiB): powers of 10 from 100 B to 10 GB.
_SIZE_BUCKETS = tuple(float(10**n) for n in range(2, 11))
# Advertise batches and reprovides: a few keys take milliseconds; 50,000 keys or a full re-walk
# of a containerd with thousands of blobs take seconds.
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metric objects; ``registry`` is what the ``/metrics`` endpoint exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("handler", "method", "code")
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to the end of its response body, in seconds.",
            labels,
            registry=self.registry,
        )
        self.http_response_size = Histogram(
            "http_response_size_bytes",
            "Size of response bodies in bytes.",
            labels,
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.http_requests_inflight = Gauge(
            "http_requests_inflight",
            "Requests being served right now.",
            ("handler",),
            registry=self.registry,
        )
        self.page_cache_evicted = Counter(
            "spegel_page_cache_evicted_bytes",
            "Bytes of served files whose pages were advised out of the page cache (DONTNEED).",
            registry=self.registry,
        )
        self.bytes_served = Counter(
            "spegel_served_bytes",
            "Body bytes served, by source: local (sendfile or streamed from the store), peer (relayed).",
            ("source",),
            registry=self.registry,
        )
        # exported at 0 from the start, so rate() sees the first bytes; bytes relayed from peers
        # are counted by the mirror and exported as spegel_relayed_bytes_total
        self.bytes_served.labels("local")
        self.mirror_requests = Counter(
            "spegel_mirror_requests",
            "Requests the mirror tried to serve from peers, by registry and cache=hit (served) or miss.",
            ("registry", "cache"),
            registry=self.registry,
        )
        self.mirror_last_success = Gauge(
            "spegel_mirror_last_success_timestamp_seconds",
            "Unix time of the last request served from a peer.",
            registry=self.registry,
        )
        self.resolve_duration = Histogram(
            "spegel_resolve_duration_seconds",
            "Time from the start of a peer lookup to its first provider, by router.",
            ("router",),
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )

        self.advertise_duration = Histogram(
            "spegel_advertise_duration_seconds",
            "Time to apply one advertise batch (list images, walk changed ones, advertise and withdraw "
            "keys), in seconds.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.reprovide_duration = Histogram(
            "spegel_reprovide_duration_seconds",
            "Time to re-send every advertised key to its closest peers (each --reprovide-interval), "
            "in seconds.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def mirror_result(self, registry: str, served: bool) -> None:
        """The Mirror's ``on_result`` hook: one call per mirrored request."""
        self.mirror_requests.labels(registry, "hit" if served else "miss").inc()
        if served:
            self.mirror_last_success.set_to_current_time()


class StateCollector(Collector):
    """Gauges and counters read from live components at scrape time.

    Components keep plain attributes (cheap on their hot paths); this turns ``source()`` into
    metric families only when Prometheus asks, so nothing is copied between scrapes.
    """

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return list(self._source())


def gauge(name: str, help: str, value: float, **labels: str) -> GaugeMetricFamily:
    """One gauge family with one sample (labels optional)."""
    family = GaugeMetricFamily(name, help, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(name: str, help: str, value: float) -> CounterMetricFamily:
    """One counter family (``name`` without ``_total``) with one sample."""
    family = CounterMetricFamily(name, help)
    family.add_metric([], value)
    return family
