"""Every relative link in the README and the docs points at a file inside the repository (and,
with ``#anchor``, at a heading of that file), so the docs stand on their own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def links_of(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code blocks are not links
    return [target for target in LINK.findall(text) if not EXTERNAL.match(target)]


def anchors_of(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*?)\s*$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def broken_links(page: Path, root: Path) -> list[str]:
    broken = []
    for target in links_of(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(root.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    assert broken_links(page, ROOT) == []


def test_pages_are_found_and_have_links() -> None:
    assert ROOT / "docs" / "design.md" in PAGES
    assert any(links_of(page) for page in PAGES)


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A heading\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[up](../shared/DESIGN.md) [gone](docs/missing.md) [ok](docs/there.md#a-heading) "
        "[bad anchor](docs/there.md#nope) [web](https://example.org/x) [self](#title)\n# Title\n"
    )
    assert broken_links(page, tmp_path) == [
        "../shared/DESIGN.md: outside the repository",
        "docs/missing.md: no such file",
        "docs/there.md#nope: no heading #nope in there.md",
    ]
