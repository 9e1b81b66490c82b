"""Every metric family spegel-py exports: names, labels and help texts, on an injected registry.

Names and labels are a contract: families Spegel also exports (the ``http_*`` ones,
``spegel_mirror_requests_total``, ``spegel_resolve_duration_seconds``, the
``spegel_advertised_*`` gauges and others) carry Spegel's names, which users' dashboards query;
spegel-py's own are plotted by ``helm/spegel-py/dashboards/spegel-py.json``. Two kinds live here:

- instruments that the request paths update (:class:`Metrics`: histograms, counters, gauges);
- collectors that read the components' own plain counters when Prometheus scrapes
  (:meth:`Metrics.watch`), so nothing is copied between scrapes and the hot paths only add to an
  int. Each collector states, as a Protocol, what it reads, and imports no component.

Nothing here touches the global registry: each test builds a fresh :class:`Metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spegel_py.cgroup import page_cache_bytes
from spegel_py.metricsources import AdvertiserState, Relay, RelayPool, RouterState

# Response sizes span JSON errors (100 B) to layers (GiB): powers of 10 from 100 B to 10 GB.
_SIZE_BUCKETS = tuple(float(10**n) for n in range(2, 11))
# Advertise batches and reprovides: a few keys take milliseconds; 50,000 keys or a full re-walk
# of a containerd with thousands of blobs take seconds.
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# Labels never carry client input verbatim (a label set is a time series that lives as long as
# the process): methods and registries outside a fixed set are counted as OTHER.
OTHER = "other"
_METHODS = frozenset({"GET", "HEAD"})


def method_label(method: str) -> str:
    """The ``method`` label of the HTTP families: ``GET``, ``HEAD`` (all that is served) or ``other``."""
    return method if method in _METHODS else OTHER


class Metrics:
    """The instruments, and the registry that ``/metrics`` exposes (``registry``)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, mirrored_registries: Collection[str] | None = None
    ) -> None:
        """``mirrored_registries``: the hosts of ``--mirrored-registries`` (``None``: every
        registry is mirrored), the only values of the ``registry`` label besides ``other``."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._registry_labels = frozenset(mirrored_registries or ())
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
        # local serving adds to it; the relay's bytes are read from its stats (see watch)
        self.served_bytes = ServedBytes()
        self.registry.register(self.served_bytes)
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

        # Swarm pulls, item 1 (spegel_py/serving/growing.py, spegel_py/routing/inprogress.py).
        self.in_progress_serves = Counter(
            "spegel_in_progress_serves",
            "Blobs served to peers while still being pulled, by outcome: "
            "complete, aborted / stalled / mismatch (the ingest ended so; the response was cut).",
            ("outcome",),
            registry=self.registry,
        )
        for outcome in ("complete", "aborted", "stalled", "mismatch"):
            self.in_progress_serves.labels(outcome)
        self.in_progress_served_bytes = Counter(
            "spegel_in_progress_served_bytes",
            "Body bytes of blobs served while still being pulled "
            '(also counted in spegel_served_bytes_total{source="local"}).',
            registry=self.registry,
        )
        self.in_progress_advertised = Gauge(
            "spegel_in_progress_advertised", "Blobs advertised under their in-progress key.",
            registry=self.registry)  # fmt: skip
        # Swarm pulls, item 2 (spegel_py/relay/coordinate.py).
        self.pull_coordination = Counter(
            "spegel_pull_coordination", "Blob misses settled by pull coordination, by outcome: won (this "
            "node fetches it upstream), waited (streamed from the node that does), timed_out (it served "
            "nothing in time: upstream).", ("outcome",), registry=self.registry)  # fmt: skip
        for outcome in ("won", "waited", "timed_out"):
            self.pull_coordination.labels(outcome)

    def mirror_result(self, registry: str, served: bool) -> None:
        """The Mirror's ``on_result`` hook: one call per mirrored request.

        ``registry`` is the client's ``ns``: it becomes the label only when it is one of the
        configured mirrored registries (or empty: no ``ns``), else ``other``.
        """
        label = registry if registry in self._registry_labels or not registry else OTHER
        self.mirror_requests.labels(label, "hit" if served else "miss").inc()
        if served:
            self.mirror_last_success.set_to_current_time()

    def watch(
        self, *, router: RouterState, advertiser: AdvertiserState, relay: Relay, pool: RelayPool
    ) -> None:
        """Register the collectors of the daemon's components and process (call once per registry)."""
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.served_bytes.read_peer_from(relay)
        for collector in (
            AdvertiserCollector(advertiser),
            RouterCollector(router),
            RelayCollector(relay, pool),
            CgroupCollector(),
        ):
            self.registry.register(collector)


# -- collectors --------------------------------------------------------------------------------
class ServedBytes(Collector):
    """``spegel_served_bytes_total{source}``: body bytes this node served to its clients.

    ``source="local"``: from its own content store, added by the local serving path
    (:meth:`add_local`); ``source="peer"``: relayed from other nodes, read from the relay's
    stats at scrape time (0 until :meth:`read_peer_from`). Both series exist from the start, so
    ``rate()`` sees the first bytes.
    """

    def __init__(self) -> None:
        self.local = 0
        self._relay: Relay | None = None
        self._created = time.time()

    def add_local(self, count: int) -> None:
        """``count`` more body bytes were sent from the local content store."""
        self.local += count

    def read_peer_from(self, relay: Relay) -> None:
        """Report ``relay.stats.bytes_relayed`` as ``source="peer"`` from now on."""
        self._relay = relay

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "spegel_served_bytes",
            "Body bytes served to clients, by source: local (from this node's content store), peer "
            "(relayed from other nodes, the bytes of spegel_relayed_bytes_total).",
            labels=["source"],
        )
        peer = self._relay.stats.bytes_relayed if self._relay is not None else 0
        family.add_metric(["local"], self.local, created=self._created)
        family.add_metric(["peer"], peer, created=self._created)
        return [family]


class AdvertiserCollector(Collector):
    """``spegel_advertised_*`` (by registry) and the advertiser's key and failure counts."""

    def __init__(self, advertiser: AdvertiserState) -> None:
        self._advertiser = advertiser

    def collect(self) -> Iterable[Metric]:
        advertiser = self._advertiser
        families = {
            "spegel_advertised_images": "Images advertised to peers, by registry.",
            "spegel_advertised_image_tags": "Tagged images advertised to peers, by registry.",
            "spegel_advertised_image_digests": "Images advertised by digest only, by registry.",
            "spegel_advertised_content_digests": "Distinct blob digests advertised, by registry.",
        }
        gauges = {name: GaugeMetricFamily(name, text, labels=["registry"]) for name, text in families.items()}
        for registry, counts in advertiser.counts().items():
            gauges["spegel_advertised_images"].add_metric([registry], counts.images)
            gauges["spegel_advertised_image_tags"].add_metric([registry], counts.image_tags)
            gauges["spegel_advertised_image_digests"].add_metric([registry], counts.image_digests)
            gauges["spegel_advertised_content_digests"].add_metric([registry], counts.content_digests)
        return [
            *gauges.values(),
            gauge("spegel_advertised_keys", "Keys announced through the router.",
                  len(advertiser.advertised())),
            counter("spegel_advertise_failures", "Advertise batches that failed and were retried.",
                    advertiser.failures),
        ]  # fmt: skip


class RouterCollector(Collector):
    """The router's table and record store sizes."""

    def __init__(self, router: RouterState) -> None:
        self._router = router

    def collect(self) -> Iterable[Metric]:
        return [
            gauge("spegel_router_peers", "Peers in the routing table.", self._router.peer_count()),
            gauge("spegel_router_provider_records",
                  "Provider records (key, provider) this node's DHT stores for the cluster.",
                  self._router.provider_records()),
            labelled_counter("spegel_router_provider_records_refused",
                             "Provider records refused by reason: invalid_key (not a 34-byte sha2-256 "
                             "multihash), peer_limit (the peer holds its limit), key_limit (the key "
                             "has its limit of providers), evicted (dropped before expiry to stay "
                             "within the total limit).",
                             "reason", self._router.provider_refusals()),
            labelled_counter("spegel_router_streams_refused",
                             "Inbound router streams reset by reason: peer_limit / node_limit (DHT "
                             "streams of one peer / of all peers), connection_limit (streams one "
                             "connection keeps open).",
                             "reason", self._router.stream_refusals()),
        ]  # fmt: skip


class RelayCollector(Collector):
    """The relay's counters, its hashing threads and its buffer pool."""

    def __init__(self, relay: Relay, pool: RelayPool) -> None:
        self._relay = relay
        self._pool = pool

    def collect(self) -> Iterable[Metric]:
        stats, pool = self._relay.stats, self._pool
        return [
            counter("spegel_mirror_resumed_streams", "Blob streams resumed from another peer.",
                    stats.resumed),
            counter("spegel_mirror_integrity_failures",
                    "Peer responses whose bytes did not match their digest.", stats.corrupt),
            counter("spegel_mirror_hedged_attempts", "Extra parallel peer attempts started.", stats.hedged),
            counter("spegel_mirror_aborted_responses", "Client responses killed mid-body.", stats.aborted),
            counter("spegel_relayed_bytes", "Body bytes relayed from peers.", stats.bytes_relayed),
            counter("spegel_mirror_tag_disagreements",
                    "Tags not resolved because providers answered different digests.",
                    stats.tag_disagreements),
            labelled_counter("spegel_multi_peer_fetches",
                             "Blobs relayed from several providers at once, by outcome (complete, failed).",
                             "outcome", stats.multi_fetches),
            labelled_counter("spegel_multi_peer_ranges",
                             "Ranges of multi-provider fetches: ok (fetched whole by the first provider "
                             "that took it), retried (asked of another provider).",
                             "outcome", stats.multi_ranges),
            gauge("spegel_relay_buffers_in_use", "Relay buffers in use.", pool.in_use),
            gauge("spegel_relay_buffers_capacity", "Relay buffers available at most.", pool.capacity),
            gauge("spegel_relay_buffers_allocated", "Relay buffers allocated so far.", pool.allocated),
            gauge("spegel_relay_buffer_size_bytes", "Size of each relay buffer (--relay-buffer-size).",
                  pool.size),
            gauge("spegel_relay_hash_threads",
                  "Threads hashing relayed bytes (--relay-hash-threads; 0: on the event loop).",
                  self._relay.settings.hash_threads),
            counter("spegel_relay_buffer_waits", "Times a stream waited for a relay buffer.",
                    pool.waits_total),
            counter("spegel_relay_buffer_timeouts", "Times a stream gave up waiting for a relay buffer.",
                    pool.timeouts_total),
        ]  # fmt: skip


class CgroupCollector(Collector):
    """``spegel_cgroup_page_cache_bytes``, where the memory cgroup can be read (else nothing)."""

    def collect(self) -> Iterable[Metric]:
        cache = page_cache_bytes()
        if cache is None:
            return []
        return [
            gauge("spegel_cgroup_page_cache_bytes",
                  "Page cache charged to this process's memory cgroup (v1 total_cache, v2 file).", cache)
        ]  # fmt: skip


def gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    """One gauge family with one unlabelled sample."""
    family = GaugeMetricFamily(name, help)
    family.add_metric([], value)
    return family


def labelled_counter(name: str, help: str, label: str, values: Mapping[str, float]) -> CounterMetricFamily:
    """One counter family (``name`` without ``_total``) with a sample per value of ``label``."""
    family = CounterMetricFamily(name, help, labels=(label,))
    for value, count in values.items():
        family.add_metric([value], count)
    return family


def counter(name: str, help: str, value: float) -> CounterMetricFamily:
    """One counter family (``name`` without ``_total``) with one unlabelled sample."""
    family = CounterMetricFamily(name, help)
    family.add_metric([], value)
    return family
