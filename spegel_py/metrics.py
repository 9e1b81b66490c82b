"""Every metric spegel-py exports, built on an injected ``CollectorRegistry``.

One place for names and labels (the HTTP ones are Spegel's, which users' dashboards query);
components receive a :class:`Metrics` and never touch the global registry, so each test gets a
fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Response sizes span JSON errors (100 B) to layers (GiB): powers of 10 from 100 B to 10 GB.
_SIZE_BUCKETS = tuple(float(10**n) for n in range(2, 11))


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
