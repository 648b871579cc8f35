"""The agreement bench's reading of the nodes' logs: when a link event counts as agreed."""

from __future__ import annotations

from chaos_lab.benchmarks.agreement import Injection, event_latency
from chaos_sidecar.eventlog import VERSION, Record


def _record(t: float, node: str, kind: str, **fields) -> Record:
    return Record({"v": VERSION, "t": t, "node": node, "type": kind, **fields})


def _link_down(member_tables: dict[str, list[tuple[float, list[int], list[list[str]]]]]) -> dict | None:
    """a cuts b; a (the coordinator) decides table [1, 1] with the link down at 10.002, then
    each member's topology records as given."""
    records = [
        _record(10.0, "b", "observed", change=["link_down", "c"]),
        _record(10.002, "a", "topology", version=[1, 1], down=[["b", "c"]]),
    ]
    for node, tables in member_tables.items():
        records += [_record(t, node, "topology", version=v, down=d) for t, v, d in tables]
    records.sort(key=lambda r: r.t)
    inj = Injection("link_down", ("b", "c"), 9.99, 10.1, frozenset({"a", "b", "c"}))
    return event_latency(records, inj)


def test_a_member_that_holds_a_later_table_with_the_link_down_has_agreed() -> None:
    latency = _link_down(
        {"b": [(10.004, [1, 1], [["b", "c"]])], "c": [(10.006, [1, 2], [["b", "c"], ["a", "c"]])]}
    )
    assert latency is not None
    assert round(latency["agreement_ms"], 3) == 6.0
    assert round(latency["decision_ms"], 3) == 2.0


def test_a_member_whose_later_table_has_the_link_up_again_has_not() -> None:
    assert _link_down({"b": [(10.004, [1, 1], [["b", "c"]])], "c": [(10.006, [1, 2], [])]}) is None


def test_a_table_older_than_the_decision_does_not_count() -> None:
    assert _link_down({"b": [(10.004, [1, 1], [["b", "c"]])], "c": [(10.006, [0, 3], [["b", "c"]])]}) is None
