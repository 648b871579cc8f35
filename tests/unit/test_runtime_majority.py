"""The sidecar's runtime turns a member's lost majority into a metric, an event-log record and
a field of its local view (in process, no sockets; the clock is the test's)."""

from __future__ import annotations

from chaos_sidecar import eventlog
from chaos_sidecar.adapters.runtime import MembershipRuntime
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.protocol import Heartbeat, Message, View, encode

VIEW = View(1, ("a", "b", "c"), "a", ("a", "b", "c"))
SETTINGS = sm.Settings(0.1, 0.5, 0.05)


async def test_no_majority_is_a_gauge_a_log_record_and_part_of_the_view(tmp_path) -> None:
    now = [0.0]
    log_path = tmp_path / "a.events.jsonl"
    metrics = SidecarMetrics()
    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    runtime = MembershipRuntime(state, b"x" * 16, EventLog(log_path, "a"), metrics, clock=lambda: now[0])
    assert runtime.snapshot()["majority"] == {"reachable": True, "reaches": ["a", "b", "c"], "needed": 2}

    now[0] = 1.0  # b and c silent for twice the failure timeout
    await runtime.apply(sm.Tick())
    sample = metrics.registry.get_sample_value
    assert sample("chaostrain_no_majority") == 1 and sample("chaostrain_majority_lost_total") == 1
    assert runtime.snapshot()["majority"] == {"reachable": False, "reaches": ["a"], "needed": 2}

    now[0] = 1.1
    await runtime.receive(encode(Message("b", 1, Heartbeat(("a", "b")))), authenticated_as="b")
    assert sample("chaostrain_no_majority") == 0
    assert runtime.snapshot()["majority"]["reachable"] is True
    runtime.log.close()
    majority = (Kind.NO_MAJORITY, Kind.NO_MAJORITY_OVER)
    changes = [(r.kind, r["reaches"], r["needed"]) for r in eventlog.read([log_path]) if r.kind in majority]
    assert changes == [(Kind.NO_MAJORITY, ["a"], 2), (Kind.NO_MAJORITY_OVER, ["a", "b"], 2)]
