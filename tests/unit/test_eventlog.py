"""The event-log contract: what a writer appends, a reader gets back; anything else is refused by name."""

from __future__ import annotations

import json

import pytest

from chaos_sidecar import eventlog
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import VERSION, EventLog, Kind


def test_what_the_writer_appends_the_reader_returns_typed(tmp_path) -> None:
    path = tmp_path / "n0.jsonl"
    log = EventLog(path, "n0")
    log.write(Kind.STEP, step=3, loss=0.5)
    log.write(Kind.DONE, step=3, digest="ab")
    log.close()
    step, done = eventlog.read([path, tmp_path / "missing.jsonl"])
    assert (step.kind, step.node, step["step"], step["loss"]) == (Kind.STEP, "n0", 3, 0.5)
    assert done.kind is Kind.DONE and done.t >= step.t
    assert json.loads(path.read_text().splitlines()[0])["v"] == VERSION


def test_a_writer_without_a_path_writes_nothing() -> None:
    EventLog(None, "n0").write(Kind.STEP, step=1)  # the trainer without --event-log


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path) -> None:
    path = tmp_path / "n0.jsonl"
    EventLog(path, "n0").write(Kind.START, pid=1)
    with path.open("a") as f:
        f.write('{"v": 1, "t": 2.0, "node": "n0", "ty')
    assert [r.kind for r in eventlog.read([path])] == [Kind.START]


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        ({"v": 2, "t": 1.0, "node": "n0", "type": "step"}, "where.v", "version 2"),
        ({"t": 1.0, "node": "n0", "type": "step"}, "where.v", "version None"),
        ({"v": 1, "t": 1.0, "node": "n0", "type": "stepped"}, "where.type", "unknown record kind 'stepped'"),
        ({"v": 1, "t": "now", "node": "n0", "type": "step"}, "where.t", "a time in seconds"),
        ({"v": 1, "t": 1.0, "type": "step"}, "where.node", "a node id"),
    ],
)
def test_a_record_of_another_version_or_kind_is_refused_naming_the_field(raw, field, says) -> None:
    with pytest.raises(InputError, match=says) as caught:
        eventlog.parse(json.dumps(raw), "where")
    assert caught.value.field == field


def test_a_line_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(InputError, match="not JSON"):
        eventlog.parse("{", "where")
    with pytest.raises(InputError, match="JSON object"):
        eventlog.parse("[1]", "where")


def test_a_writer_refuses_a_kind_the_readers_do_not_know(tmp_path) -> None:
    with pytest.raises(ValueError):
        EventLog(tmp_path / "n0.jsonl", "n0").write("stepped")  # type: ignore[arg-type]
