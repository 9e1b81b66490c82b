"""``python -m bench.reliability <row>... | all [--scale full|ci] [--write-doc] [--from-json FILE...]``.

Runs the rows in order, prints one line per row as it finishes (figure, bound, PASS/FAIL) and
the details of failed rows, writes every row's JSON to ``--out``, and with ``--write-doc``
rewrites the table of docs/reliability.md between its markers. ``--from-json`` takes rows from
earlier runs' JSON (to re-run a few rows and rewrite the whole table). Exit status 1 if a row
failed.
Run as root from the repository root (containerd needs it); ``PYTHONPATH=$PWD``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import common
from .common import Row, Scale

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability-table:begin -->", "<!-- reliability-table:end -->"


def rows() -> dict[str, Callable[[Scale], Row]]:
    from . import crashes, fuzz, hostile, load, slow

    return {
        "load": load.run,
        "slowloris": slow.run,
        "hostile": hostile.run,
        "containerd-restart": crashes.run_containerd_restart,
        "sigkill": crashes.run_sigkill,
        "fuzz": fuzz.run,
    }


def table(results: list[Row], scale: Scale) -> str:
    out = [
        f"Scale `{scale.name}`, {os.cpu_count()} cores; each row's time and the load average "
        "(1 min) when it finished are under its name.",
        "",
        "| row | scenario | measured | bound | result | command |",
        "|-----|----------|----------|-------|--------|---------|",
    ]
    for row in results:
        verdict = (
            "pass" if row.passed else "FAIL: " + "; ".join(p.strip().splitlines()[-1] for p in row.problems)
        )
        command = f"`python -m bench.reliability {row.name}`"
        cells = [f"{row.name} ({row.measured})", row.scenario, row.figure, row.bound, verdict, command]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out)


def _cell(text: str, limit: int = 400) -> str:
    """One table cell: a single line, no pipes, at most ``limit`` characters."""
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    available = rows()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="*", help=f"any of: {', '.join(available)}, all")
    ap.add_argument("--scale", choices=["full", "ci"], default="full")
    ap.add_argument("--out", default=str(REPO / ".work" / "bench" / "reliability.json"))
    ap.add_argument("--write-doc", action="store_true", help=f"rewrite the table in {DOC.name}")
    ap.add_argument(
        "--from-json",
        nargs="+",
        default=[],
        metavar="FILE",
        help="rows from earlier --out files (a later file's row replaces an earlier one's), "
        "then the rows named on the command line, if any",
    )
    a = ap.parse_args(argv)
    scale = common.FULL if a.scale == "full" else common.CI
    names = list(available) if "all" in a.rows else a.rows
    unknown = [n for n in names if n not in available]
    if unknown or not (names or a.from_json):
        ap.error(f"rows to run: any of {', '.join(available)}, all (unknown: {unknown})")
    earlier: dict[str, Row] = {}
    for path in a.from_json:
        for data in json.loads(Path(path).read_text()):
            earlier[data["name"]] = Row(**data)
    results = [row for name, row in earlier.items() if name not in names]
    for name in names:
        try:
            row = available[name](scale)
        except Exception as exc:  # a row that crashes is a failed row, the others still run
            first = (str(exc).splitlines() or [""])[0][:200]
            row = Row(
                name,
                name,
                f"crashed: {type(exc).__name__}: {first}",
                "",
                False,
                problems=[traceback.format_exc()],
            )
        row.measured = (
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.0f}"
        )
        results.append(row)
        print(
            f"{'PASS' if row.passed else 'FAIL'} {row.name}: {row.figure}  [bound: {row.bound}]", flush=True
        )
        if not row.passed:
            print("  " + "\n  ".join(row.problems), flush=True)
    order = list(available)
    results.sort(key=lambda r: order.index(r.name) if r.name in order else len(order))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps([vars(r) for r in results], indent=1, default=str))
    text = table(results, scale)
    print(text)
    if a.write_doc:
        write_doc(text)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
