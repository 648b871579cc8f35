"""Link descriptions for --hosts netns: presets, files, and bad entries named."""

from __future__ import annotations

import pytest

from chaos_lab.links import parse_links
from chaos_sidecar.errors import InputError

NODES = ["n0", "n1", "n2", "n3", "n4"]


def test_presets() -> None:
    assert parse_links("equal", NODES) == dict.fromkeys(NODES)
    assert parse_links("skewed", NODES) == {"n0": 40e6, "n1": 20e6, "n2": 10e6, "n3": 10e6, "n4": 40e6}


def test_file_names_some_nodes(tmp_path) -> None:
    path = tmp_path / "links.json"
    path.write_text('{"rates_mbps": {"n1": 2.5}}')
    assert parse_links(str(path), NODES) == dict.fromkeys(NODES) | {"n1": 2.5e6}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"rates_mbps": {"n7": 10}}', "--links.rates_mbps.n7"),
        ('{"rates_mbps": {"n0": -1}}', "--links.rates_mbps.n0"),
        ('{"rates_mbps": {"n0": true}}', "--links.rates_mbps.n0"),
        ('{"rates_mbps": {"n0": 10, "n0": 20}}', "--links.rates_mbps.n0"),
        ('{"rates_mbps": [10, 20]}', "--links"),
        ('{"rates": {}}', "--links"),
        ("not json", "--links"),
    ],
)
def test_bad_entries_are_named(tmp_path, text: str, field: str) -> None:
    path = tmp_path / "links.json"
    path.write_text(text)
    with pytest.raises(InputError) as raised:
        parse_links(str(path), NODES)
    assert raised.value.field == field


def test_missing_file_is_refused() -> None:
    with pytest.raises(InputError, match="does not exist"):
        parse_links("/nonexistent/links.json", NODES)
