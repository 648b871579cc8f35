"""docs/security.md's threat model table stays true: every row says what stops the threat and
names tests (``path::test_function``) that exist, so a row cannot outlive its evidence."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def threat_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|")
    ]
    assert rows[0] == ["who", "can reach", "what stops them", "shown by"], rows[0]
    return rows[2:]  # below the header and its rule


def test_every_threat_names_what_stops_it_and_tests_that_exist() -> None:
    rows = threat_rows()
    assert len(rows) >= 10
    for who, reach, stop, shown in rows:
        assert who and reach and stop, who
        references = REFERENCE.findall(shown)
        assert references, f"{who}: no test named"
        for path, test in references:
            source = ROOT / path
            assert source.exists(), f"{who}: {path} does not exist"
            assert re.search(rf"^(async )?def {test}\(", source.read_text(), re.MULTILINE), (
                f"{who}: {path}::{test}"
            )


def test_the_check_can_fail() -> None:
    assert not REFERENCE.findall("`tests/unit/nowhere.py` test_x")
    source = (ROOT / "tests/unit/test_secret_rotation.py").read_text()
    assert not re.search(r"^(async )?def test_that_does_not_exist\(", source, re.MULTILINE)
