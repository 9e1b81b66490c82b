"""One loaded chart for every Helm test; its native handle is released at the end, and the
Helm SDK must then hold no handle the tests opened (a leak would show up here). Every case of
``helmcases.CASES`` is rendered once per session, for the rendering, schema and policy tests."""

from __future__ import annotations

from collections.abc import Iterator

import helm_python as helm
import pytest
from helmcases import CASES
from helmsupport import CHART_DIR, Rendered, render


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    before = helm.open_handles_count()
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded
    assert helm.open_handles_count() == before


@pytest.fixture(scope="session")
def renders(chart: helm.Chart) -> dict[str, Rendered]:
    return {case: render(chart, values) for case, values in CASES.items()}
