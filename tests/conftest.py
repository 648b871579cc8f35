"""Shared test configuration: markers by directory, repository paths, chart rendering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "chaos-training"
_MARK_BY_DIR = {
    "unit": "unit",
    "integration": "integration",
    "charts": "charts",
    "e2e": "e2e",
    "e2e_local": "e2e_local",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        mark = _MARK_BY_DIR.get(parts[0]) if parts else None
        if mark:
            item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture
def repo_root() -> Path:
    return ROOT


RenderChart = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render_chart() -> RenderChart:
    """Render the chart with Helm's own engine (offline, like ``helm template``): the objects."""
    chart = helm_python.Chart.load(str(CHART))

    def render(values: dict[str, Any] | None = None, namespace: str = "chaos-system") -> list[dict[str, Any]]:
        manifests = chart.render(values or {}, name="chaos", namespace=namespace)
        return [
            doc
            for path, text in sorted(manifests.items())
            if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    return render
