"""Shared test configuration: markers by directory, repository paths."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_MARK_BY_DIR = {"unit": "unit", "integration": "integration", "charts": "charts", "e2e": "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        mark = _MARK_BY_DIR.get(parts[0]) if parts else None
        if mark:
            item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture
def repo_root() -> Path:
    return ROOT
