"""Every figure quoted in docs/benchmarks.md matches its result file.

The convention: a quoted figure is a link to the result file it comes from, with the JSON path
of its value as the fragment, optionally scaled to the unit the doc uses:
``[19.33](../bench/results/scale-out-equal.json#methods.chaos.delay_s)``,
``[67.1](../bench/results/scale-out-equal.json#methods.chaos.bytes/1e6)`` (MB),
``[0.22](../bench/results/long-haul-200.json#final_loss_relative_difference*100)`` (%).
The path's parts are object keys or list indexes, separated by dots. The value must round to
the figure as quoted (to its number of decimals). In a table every number must be such a
link, so a new figure in a table cannot go unchecked; prose numbers are checked where they are
links (derived arithmetic in prose, such as a ratio of two quoted figures, is not)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "docs" / "benchmarks.md"]
NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
FIGURE = re.compile(rf"\[({NUMBER})\]\(([^)#\s]+\.json)#([^)\s]+)\)")
BARE_NUMBER = re.compile(rf"(?<![\w.\-]){NUMBER}")
SCALE = re.compile(r"^(.*?)(?:([*/])(\d+(?:\.\d+)?(?:e\d+)?))?$")


def value_at(data: object, path: str) -> object:
    for part in path.split("."):
        if isinstance(data, list):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data[part]
        else:
            raise KeyError(part)
    return data


def figure_error(page: Path, quoted: str, target: str, fragment: str) -> str | None:
    """Why the figure ``quoted`` does not match ``target#fragment``, or None."""
    where = f"[{quoted}]({target}#{fragment})"
    file = (page.parent / target).resolve()
    if not file.is_file():
        return f"{where}: no such result file"
    path, op, factor = SCALE.match(fragment).groups()  # type: ignore[union-attr]
    try:
        value = value_at(json.loads(file.read_text()), path)
    except (KeyError, IndexError, ValueError):
        return f"{where}: no value at {path} in {file.name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where}: {path} in {file.name} is {value!r}, not a number"
    if op:
        value = value * float(factor) if op == "*" else value / float(factor)
    figure = quoted.replace(",", "")
    decimals = len(figure.partition(".")[2])
    if abs(value - float(figure)) > 0.5 * 10**-decimals + 1e-9 * abs(value):  # not its rounding
        return f"{where}: the file says {value:g}"
    return None


def figure_errors(page: Path) -> list[str]:
    errors = []
    lines = page.read_text().splitlines()
    separator = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
    for number, line in enumerate(lines, 1):
        errors += [f"line {number}: {e}" for f in FIGURE.findall(line) if (e := figure_error(page, *f))]
        is_header = number < len(lines) and separator.match(lines[number])
        if line.startswith("|") and not separator.match(line) and not is_header:
            left = BARE_NUMBER.findall(FIGURE.sub("", re.sub(r"`[^`]*`", "", line)))
            errors += [f"line {number}: {n} in a table is not linked to its result file" for n in left]
    return errors


def test_every_figure_in_the_benchmarks_doc_matches_its_result_file() -> None:
    for page in PAGES:
        assert figure_errors(page) == [], page.name


def test_the_doc_quotes_figures_from_every_scenario_it_covers() -> None:
    targets = {Path(t).name for page in PAGES for _, t, _ in FIGURE.findall(page.read_text())}
    assert {"scale-out-equal.json", "scale-out-skewed.json", "events.json", "scalability.json"} <= targets


def test_a_wrong_missing_or_unlinked_figure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"a": {"b": [1.234, 67083080]}, "s": "x"}))
    page = tmp_path / "doc.md"
    page.write_text(
        "Prose [1.23](r.json#a.b.0) and [1.2](r.json#a.b.0), [67.1](r.json#a.b.1/1e6) MB.\n"
        "Wrong [1.24](r.json#a.b.0), [5](r.json#a.c), [5](r.json#s), [5](gone.json#a).\n"
        "| method | delay s |\n|---|---|\n"
        "| chaos (at 4 MB/s) | [1.234](r.json#a.b.0) |\n"
        "| n0 | 7 / [67,083,080](r.json#a.b.1) |\n"
    )
    assert figure_errors(page) == [
        "line 2: [1.24](r.json#a.b.0): the file says 1.234",
        "line 2: [5](r.json#a.c): no value at a.c in r.json",
        "line 2: [5](r.json#s): s in r.json is 'x', not a number",
        "line 2: [5](gone.json#a): no such result file",
        "line 5: 4 in a table is not linked to its result file",
        "line 6: 7 in a table is not linked to its result file",
    ]
