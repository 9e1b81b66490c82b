#!/usr/bin/env bash
# Run end-to-end tests many times (issue 4's "20 of 20 runs" bar) and summarise pass counts and
# timings. Every chunk holds the heavy-run lock and is bounded by an outer timeout (SIGTERM, then
# SIGKILL: the harness's PDEATHSIG/pid registry make sure no daemon outlives a killed chunk).
#
#   scripts/repeat_e2e.sh [-n RUNS] [-c RUNS_PER_CHUNK] [-o OUTDIR] TEST_NAME...
#   scripts/repeat_e2e.sh -n 20 -c 5 \
#       test_peer_killed_mid_transfer_the_pull_completes_from_another_peer \
#       test_corrupt_peer_is_detected_and_bad_content_never_committed
#
# One pytest session per chunk (``--repeat``, tests/conftest.py): a fresh 3-node cluster per run,
# the upstream and the images once per chunk. Results: OUTDIR/*.xml (JUnit, with the tests'
# recorded properties), OUTDIR/*.log, and the summary on stdout and in OUTDIR/summary.txt.
set -euo pipefail

runs=20
chunk=5
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.work/repeat-e2e/$(date -u +%Y%m%dT%H%M%SZ)"
lock="$root/.work/heavy.lock"
chunk_timeout=$((15 * 60)) # the lock is held at most ~15 min at a time

while getopts "n:c:o:" opt; do
    case $opt in
    n) runs=$OPTARG ;;
    c) chunk=$OPTARG ;;
    o) out=$OPTARG ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-n RUNS] [-c CHUNK] [-o OUTDIR] TEST_NAME..." >&2; exit 2; }
mkdir -p "$out"
cd "$root"

for test in "$@"; do
    done_runs=0
    while [ "$done_runs" -lt "$runs" ]; do
        n=$((runs - done_runs < chunk ? runs - done_runs : chunk))
        name="$test-$((done_runs + 1))"
        echo "$(date -u +%T) $test: runs $((done_runs + 1))..$((done_runs + n)) (waiting for the lock)"
        flock "$lock" timeout -k 30 "$chunk_timeout" \
            .venv/bin/pytest "tests/e2e/test_p2p_pull.py::$test" --repeat "$n" -p no:cacheprovider \
            -q -rfE -o junit_family=xunit1 --junitxml "$out/$name.xml" >"$out/$name.log" 2>&1 || true
        tail -1 "$out/$name.log"
        done_runs=$((done_runs + n))
    done
done

.venv/bin/python - "$out" <<'EOF' | tee "$out/summary.txt"
"""Pass counts and per-run wall times (JUnit 'time' of each test case) per test."""
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

runs: dict[str, list[tuple[bool, float, dict[str, str]]]] = defaultdict(list)
for xml in sorted(Path(sys.argv[1]).glob("*.xml")):
    for case in ET.parse(xml).iter("testcase"):
        name = case.get("name", "").split("[")[0]
        failed = any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        runs[name].append((not failed, float(case.get("time", 0)), props))
for name, results in runs.items():
    times = sorted(t for _, t, _ in results)
    passed = sum(ok for ok, _, _ in results)
    print(f"{name}: {passed}/{len(results)} passed; run time s: min {times[0]:.1f} "
          f"median {statistics.median(times):.1f} max {times[-1]:.1f}")
    keys = sorted({k for _, _, p in results for k in p})
    for key in keys:
        values = sorted(float(p[key]) for _, _, p in results if key in p)
        print(f"  {key}: min {values[0]:.2f} median {statistics.median(values):.2f} max {values[-1]:.2f}")
EOF
