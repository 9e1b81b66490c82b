"""Rows "containerd-restart" and "sigkill": the daemon's neighbours die, or the daemon does.

containerd-restart: two real nodes; node 1's containerd is stopped and started again while its
spegel-py runs. Right after containerd answers again, node 1 pulls ``test/multi`` (straight from
upstream); the figure is the time from the end of that pull until node 2 finds every key of the
image through its own spegel-py, which needs node 1's event stream reconnected and the new keys
advertised (the time from containerd's return is reported too; it includes the pull, which on a
loaded machine takes seconds). Node 1's spegel-py must keep its pid (no crash) and ``/readyz``.

sigkill: two real nodes; node 1 holds ``test/big``. Node 2 pulls it through its own spegel-py
(relayed from node 1) and, once that spegel-py has written some MiB to containerd, it is
SIGKILLed. containerd must fall back (to upstream) and the pull complete with the right bytes.
Then node 2's spegel-py is started again and node 1 deletes the image, so node 1 can find it
only through node 2's advertisements: the figure is the time until it does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from harness import HarnessError
from harness.cluster import image_complete, process_io
from support.poll import wait_until

from . import common
from .common import Row, Scale
from .lab import lab

READVERTISE_BOUND = 5.0  # seconds from the new image's pull to its being findable
KILL_AFTER = 8 << 20  # bytes node 2's spegel-py has written before it is killed
ADVERTISE_BOUND = 30.0  # seconds from the restarted spegel-py's readiness to being found


def run_containerd_restart(scale: Scale) -> Row:
    with lab(size=2) as lab_:
        n1, n2 = lab_.cluster.nodes
        small, multi = lab_.images.small, lab_.images.multi
        n1.containerd.pull(lab_.ref(small))
        lab_.cluster.wait_findable([small], by=[n2])
        pid = n1.spegel.pid
        stopped = time.monotonic()
        n1.containerd.restart()
        back = time.monotonic()
        n1.containerd.pull(lab_.ref(multi), all_platforms=True)
        pulled = time.monotonic()
        try:
            lab_.cluster.wait_findable([multi], by=[n2], timeout=60)
            found = time.monotonic()
        except AssertionError:
            found = float("inf")
        details: dict[str, Any] = {
            "containerd_down_s": round(back - stopped, 2),
            "pull_s": round(pulled - back, 2),
            "findable_after_return_s": round(found - back, 2),
            "findable_after_pull_s": round(found - pulled, 2),
            "same_pid": n1.spegel.running() and n1.spegel.pid == pid,
            "readyz": n1.spegel.status("/readyz"),
        }
        still = lab_.cluster.wait_findable([small], by=[n2], timeout=30)
        details["old_image_findable_s"] = round(still, 2)
    return Row.judged(
        "containerd-restart",
        "node 1's containerd stopped and started under its running spegel-py; node 1 then pulls "
        "test/multi; node 2 looks it up through its spegel-py",
        f"no crash (same pid: {details['same_pid']}, /readyz {details['readyz']}); new image findable "
        f"{details['findable_after_pull_s']} s after its pull ({details['findable_after_return_s']} s "
        f"after containerd's return, the pull took {details['pull_s']} s)",
        f"same pid, /readyz 200, findable within {READVERTISE_BOUND:.0f} s of the pull",
        details,
        (details["same_pid"], "node 1's spegel-py exited"),
        (details["readyz"] == 200, f"/readyz {details['readyz']}"),
        (found - pulled <= READVERTISE_BOUND, f"findable {found - pulled:.1f} s after the pull"),
    )


def run_sigkill(scale: Scale) -> Row:
    with lab(size=2, big_layer_mib=scale.big_layer_mib) as lab_:
        n1, n2 = lab_.cluster.nodes
        big = lab_.images.big
        ref = lab_.ref(big)
        n1.containerd.pull(ref)
        lab_.cluster.wait_findable([big], by=[n2])
        pid = n2.spegel.pid
        base = process_io(pid).get("wchar", 0)
        mark = lab_.upstream.mark()
        outcome: dict[str, Any] = {}

        def pull() -> None:
            try:
                outcome["seconds"] = n2.pull(ref, timeout=300).seconds
            except HarnessError as exc:
                outcome["error"] = str(exc)[-600:]

        puller = threading.Thread(target=pull, name="sigkill-pull")
        puller.start()
        try:
            wait_until(
                lambda: process_io(pid).get("wchar", 0) - base >= KILL_AFTER or "error" in outcome,
                within=120,
                interval=0.005,
                what="node 2's spegel-py to relay some MiB",
            )
            sent = process_io(pid).get("wchar", 0) - base
            lab_.cluster.stop_spegel(n2, kill=True)
        finally:
            puller.join(320)
        problems = image_complete(n2, ref, big) if "error" not in outcome else [outcome["error"]]
        wrong = common.wrong_blobs(n2.containerd.content_path)
        upstream_blobs = sum(1 for r in lab_.upstream.requests(mark) if "/blobs/" in r.path)
        n2.spegel.start()
        restarted = time.monotonic()
        n1.containerd.remove_image(ref)
        try:
            lab_.cluster.wait_findable([big], by=[n1], timeout=90)
            advertised = time.monotonic() - restarted
        except AssertionError:
            advertised = float("inf")
    details = {
        "relayed_before_kill_mib": round(sent / (1 << 20), 1),
        "pull": outcome,
        "problems": problems,
        "wrong_blobs": wrong,
        "upstream_blob_requests": upstream_blobs,
        "advertised_after_restart_s": round(advertised, 2),
        "image_mib": big.total_size >> 20,
    }
    return Row.judged(
        "sigkill",
        f"node 2's spegel-py SIGKILLed while relaying test/big ({big.total_size >> 20} MiB) to its "
        "containerd; restarted; node 1 drops the image and looks for it",
        f"pull {'complete' if not problems else 'FAILED'} in {outcome.get('seconds', 0):.1f} s "
        f"(killed after {details['relayed_before_kill_mib']} MiB, {upstream_blobs} blob requests "
        f"to upstream), {len(wrong)} wrong blobs; found on node 2 again {advertised:.1f} s after restart",
        f"pull completes with the right bytes; node 2 found again within {ADVERTISE_BOUND:.0f} s",
        details,
        (not problems, f"pull: {problems[:2]}"),
        (not wrong, f"wrong blobs: {wrong[:3]}"),
        (sent < big.total_size, "the kill came after the whole image was relayed"),
        (advertised <= ADVERTISE_BOUND, f"found again after {advertised:.1f} s"),
    )
