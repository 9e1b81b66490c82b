"""The private network end to end, with real ``spegel-py registry`` processes: two nodes with the
same ``--router-psk-file`` mirror each other's content; a third with another key never has a
peer (not ready, its mirror finds nobody); the key is never in a log, its fingerprint is."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
from support.daemon import Daemon, MiB, free_port, get, kill, make_layout, metric, start_node, wait_ready
from support.poll import wait_until

pytestmark = pytest.mark.process


def key_file(path: Path) -> str:
    key = os.urandom(32).hex()
    path.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{key}\n")
    return key


def body_if_ok(url: str) -> bytes | None:
    status, body = get(url)
    return body if status == 200 else None


def stop_with_logs(daemon: Daemon) -> tuple[int, list[dict[str, object]]]:
    """SIGTERM, the exit status, and every JSON log line the process wrote."""
    daemon.proc.send_signal(signal.SIGTERM)
    status = daemon.proc.wait(10)
    assert daemon.proc.stderr is not None
    text = daemon.proc.stderr.read().decode()
    return status, [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_nodes_with_the_key_mirror_each_other_and_a_node_with_another_key_is_left_out(tmp_path: Path) -> None:
    shared, other = tmp_path / "shared.psk", tmp_path / "other.psk"
    secret = key_file(shared)
    key_file(other)
    digests = make_layout(tmp_path / "a-layouts", 4 * MiB)
    for name in ("b", "c"):
        (tmp_path / f"{name}-layouts").mkdir()
    ips = {"a": "127.0.0.181", "b": "127.0.0.182", "c": "127.0.0.183"}
    ports = (free_port(ips["a"]), free_port(ips["a"]), free_port(ips["a"]))
    nodes: dict[str, Daemon] = {}
    try:
        nodes["a"], a_addr = start_node(tmp_path / "a-layouts", tmp_path / "a-data", ips["a"], ports,
                                        "--router-psk-file", str(shared))  # fmt: skip
        wait_ready(nodes["a"], within=60)
        for name, psk in (("c", other), ("b", shared)):  # c first: it has tried A long before b is done
            nodes[name], _ = start_node(tmp_path / f"{name}-layouts", tmp_path / f"{name}-data", ips[name],
                                        ports, "--bootstrap-kind", "static", "--static-bootstrap-peers",
                                        a_addr, "--router-psk-file", str(psk))  # fmt: skip
        wait_until(lambda: get(nodes["c"].base + "/readyz", timeout=1)[0] == 503, within=60, what="c is up")
        wait_ready(nodes["b"], within=60)  # ready only once A is in its routing table
        layer = f"/v2/test/app/blobs/{digests['layer']}?ns=127.0.0.1%3A5000"
        body = wait_until(lambda: body_if_ok(nodes["b"].base + layer), within=30, what="b relays a's layer")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digests["layer"]

        assert get(nodes["c"].base + "/readyz")[0] == 503
        assert get(nodes["c"].base + layer)[0] == 404  # its mirror finds nobody
        assert metric(nodes["c"], "spegel_router_peers") == 0
        assert metric(nodes["c"], "spegel_router_provider_records ") == 0
        assert metric(nodes["a"], "spegel_router_peers") == 1  # b only
        assert metric(nodes["b"], "spegel_router_provider_records ") >= 1  # a's records

        fingerprints = set()
        for name in ("b", "c", "a"):
            status, logs = stop_with_logs(nodes[name])
            assert status == 0
            assert secret not in json.dumps(logs) and secret[:16] not in json.dumps(logs)
            (start,) = [line for line in logs if str(line.get("msg", "")).startswith("private network")]
            fingerprints.add(start["fingerprint"])
        assert len(fingerprints) == 2  # a and b share one, c has its own
    finally:
        for daemon in nodes.values():
            kill(daemon)
