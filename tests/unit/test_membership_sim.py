"""The membership state machine under the deterministic simulator."""

from __future__ import annotations

import pytest

from chaos_sidecar.membership import machine as sm
from chaos_sidecar.membership.sim import FAULT_KINDS, SimConfig, parse_faults, run_schedule
from chaos_sidecar.protocol import Commit, Message, View


def _run(seeds: range, **config) -> list:
    return [run_schedule(seed, SimConfig(**config)) for seed in seeds]


@pytest.mark.parametrize(("nodes", "schedules"), [(5, 120), (7, 60), (9, 25)])
def test_all_faults_no_violations(nodes: int, schedules: int) -> None:
    results = _run(range(schedules), nodes=nodes)
    failures = [(r.seed, r.violations[0]) for r in results if r.violations]
    assert not failures, failures
    assert all(r.converged for r in results)
    # the schedules really exercised the protocol, crash recovery included
    assert sum(r.events for r in results) > 10 * schedules
    assert max(r.max_epoch for r in results) >= 5
    assert sum(len(r.decision_ns) for r in results) > schedules
    assert sum(r.agreement_crashes for r in results) > schedules / 2
    assert sum(r.lost_state for r in results) > schedules / 10


@pytest.mark.parametrize("fault", FAULT_KINDS)
def test_each_fault_alone(fault: str) -> None:
    results = _run(range(40), nodes=5, faults=frozenset({fault}))
    assert not [r.violations for r in results if r.violations]


def test_messages_survive_the_wire_codec() -> None:
    results = _run(range(30), nodes=5, wire=True)
    assert not [r.violations for r in results if r.violations]


def test_same_seed_same_schedule() -> None:
    first, second = run_schedule(17, SimConfig(nodes=7)), run_schedule(17, SimConfig(nodes=7))
    assert first.trace == second.trace
    assert first.steps == second.steps


def test_simulator_catches_commit_without_majority(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the quorum rule: a lone proposer may commit. Partitions must expose it."""
    monkeypatch.setattr(sm, "quorum", lambda view: 1)
    results = _run(range(60), nodes=5, faults=frozenset({"partition", "crash"}))
    assert any(r.violations for r in results), "a broken quorum rule went unnoticed"
    assert any("two views committed" in v or "acceptances" in v for r in results for v in r.violations)


def test_simulator_catches_lost_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break failure handling: never remove anyone. Crashed members then stay in the view."""
    real = sm._support
    monkeypatch.setattr(sm, "_support", lambda s, x, view, now: max(real(s, x, view, now), view.majority))
    results = _run(range(30), nodes=5, faults=frozenset({"crash"}))
    assert any("no convergence" in v for r in results for v in r.violations)


def test_parse_faults() -> None:
    assert parse_faults("all") == frozenset(FAULT_KINDS)
    assert parse_faults("none") == frozenset()
    assert parse_faults("drop, crash") == {"drop", "crash"}
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("drop,meteor")


# --- direct state machine properties -----------------------------------------------------

SETTINGS = sm.Settings()
VIEW = View(1, ("a", "b", "c"), "a", ("a", "b", "c"))


def test_step_does_not_mutate_its_input() -> None:
    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    snapshot = (dict(state.last_heard), dict(state.reports), state.view, state.status)
    sm.step(state, sm.Tick(), 5.0)
    sm.step(state, sm.RequestLeave(), 5.0)
    assert snapshot == (dict(state.last_heard), dict(state.reports), state.view, state.status)


def test_stale_commit_is_rejected_and_epochs_only_grow() -> None:
    state = sm.initial_member("b", VIEW, SETTINGS, 0.0)
    newer = View(3, ("a", "b"), "a", ("a", "b"))
    state, actions = sm.step(state, sm.Receive(Message("a", 3, Commit(newer))), 0.1)
    assert state.epoch == 3 and any(isinstance(a, sm.Installed) for a in actions)
    state, actions = sm.step(state, sm.Receive(Message("a", 1, Commit(VIEW))), 0.2)
    assert state.epoch == 3
    assert sm.Rejected("stale_epoch") in actions


def test_coordinator_leave_hands_over() -> None:
    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    state, actions = sm.step(state, sm.RequestLeave(), 0.01)
    decided = [a for a in actions if isinstance(a, sm.Decided)]
    assert decided and decided[0].view.members == ("b", "c")
    assert decided[0].view.coordinator == "b"


def test_a_coordinator_restarted_while_leaving_still_leaves() -> None:
    """Its wish to leave is durable; its pending leave was not (found by the simulator's
    convergence check once leaves had to commit: the restarted coordinator stayed forever)."""
    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    state, actions = sm.step(state, sm.RequestLeave(), 0.01)
    assert any(isinstance(a, sm.Decided) for a in actions)  # its fast ballot is spent on it
    restarted = sm.restart(state, 0.5)
    assert restarted.want_leave and restarted.leaves == {"a": 0.5}
    _, actions = sm.step(restarted, sm.Tick(), 0.5)
    assert {a.to for a in actions if isinstance(a, sm.Send) and a.message.kind == "prepare"} == {"b", "c"}


def test_standby_joiner_waits_then_joins() -> None:
    state = sm.initial_joiner("j", "j", (("a", "a"),), SETTINGS)
    state.status = sm.STANDBY
    state, actions = sm.step(state, sm.Tick(), 1.0)
    assert actions == [] and state.status == sm.STANDBY  # silent until its trainer is ready
    state, actions = sm.step(state, sm.RequestJoin(), 1.1)
    assert state.status == sm.JOINING
    assert any(isinstance(a, sm.Send) and a.message.kind == "join" for a in actions)
    view = View(2, ("a", "j"), "a", ("a", "j"))
    state, _ = sm.step(state, sm.Receive(Message("a", 2, Commit(view))), 1.2)
    state, actions = sm.step(state, sm.Tick(), 1.3)
    assert state.status == sm.MEMBER
    assert any(isinstance(a, sm.Send) and a.message.kind == "heartbeat" for a in actions)


def test_a_first_join_asks_every_contact_then_one_at_a_time() -> None:
    """The coordinator admits only joiners it hears itself, wherever it is in the contacts."""
    contacts = (("b", "b"), ("c", "c"), ("a", "a"))
    state = sm.initial_joiner("j", "j", contacts, SETTINGS)
    asked = []
    for t in (0.0, SETTINGS.retry_interval, 2 * SETTINGS.retry_interval):
        state, actions = sm.step(state, sm.Tick(), t)
        asked.append(sorted(a.to for a in actions if isinstance(a, sm.Send) and a.message.kind == "join"))
    assert asked == [["a", "b", "c"], ["c"], ["a"]]


def test_dead_member_plus_link_down_still_leaves_a_viable_view() -> None:
    """Four members; link n1-n4 goes down, then n3 dies. n1 and n4 each reach only two of
    four, yet {n0, n1, n4} is a fine view of three (found by a random churn run on real
    processes, where judging everyone against the old view's majority stranded the group)."""
    from chaos_sidecar.protocol import Heartbeat

    view = View(1, ("n0", "n1", "n3", "n4"), "n0", ("n0", "n1", "n3", "n4"))
    state = sm.initial_member("n0", view, SETTINGS, 0.0)
    decided = []
    t = 0.0
    while t < 2.0:
        t = round(t + 0.1, 3)
        beats = [("n1", ("n0", "n1", "n3")), ("n4", ("n0", "n3", "n4"))]  # the link n1-n4 is down
        if t <= 0.4:  # n3 lives until 0.4 and hears everyone
            beats.append(("n3", ("n0", "n1", "n3", "n4")))
        elif t > 0.4 + SETTINGS.suspect_timeout:  # everyone's detector fires at about once
            beats = [("n1", ("n0", "n1")), ("n4", ("n0", "n4"))]
        for sender, hears in beats:
            state, actions = sm.step(state, sm.Receive(Message(sender, 1, Heartbeat(hears))), t)
            decided += [a.view for a in actions if isinstance(a, sm.Decided)]
        state, actions = sm.step(state, sm.Tick(), t + 0.01)
        decided += [a.view for a in actions if isinstance(a, sm.Decided)]
    # the old rule proposed nothing here, ever; now a view of three is proposed (which three
    # depends on whose reports go stale first: the next epochs settle it, see the simulator)
    assert decided, "no view was proposed: the group is stranded"
    assert len(decided[0].members) == 3 and "n0" in decided[0].members


def test_a_member_reports_when_it_reaches_no_majority_and_when_it_does_again() -> None:
    from chaos_sidecar.protocol import Heartbeat

    def majority_changes(actions: list) -> list:
        return [a for a in actions if isinstance(a, sm.MajorityChanged)]

    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    state, actions = sm.step(state, sm.Receive(Message("b", 1, Heartbeat(("a", "b", "c")))), 0.1)
    assert not majority_changes(actions) and not state.majority_lost
    # c falls silent first: a still reaches a and b, two of three
    state, actions = sm.step(state, sm.Tick(), 0.1 + SETTINGS.suspect_timeout * 0.9)
    state, actions = sm.step(state, sm.Receive(Message("b", 1, Heartbeat(("a", "b")))), 0.2)
    state, actions = sm.step(state, sm.Tick(), 0.2 + SETTINGS.suspect_timeout * 0.9)
    assert not majority_changes(actions) and not state.majority_lost
    state, actions = sm.step(state, sm.Tick(), 0.2 + SETTINGS.suspect_timeout * 1.5)  # b too
    assert majority_changes(actions) == [sm.MajorityChanged(False, ("a",), 2)] and state.majority_lost
    assert not sm.is_quiet(state)
    state, actions = sm.step(state, sm.Tick(), 0.2 + SETTINGS.suspect_timeout * 1.7)
    assert not majority_changes(actions)  # said once, not on every tick
    state, actions = sm.step(state, sm.Receive(Message("c", 1, Heartbeat(("a", "c")))), 1.5)
    assert majority_changes(actions) == [sm.MajorityChanged(True, ("a", "c"), 2)] and not state.majority_lost


# --- relaying --------------------------------------------------------------------------------


def test_a_member_relays_to_a_peer_it_no_longer_hears_directly() -> None:
    """a hears c only through b: c stays heard (no loss, no removal), and once a has not heard
    c directly for half the failure timeout its messages to c go through b as well."""
    from chaos_sidecar.protocol import Heartbeat, Relay

    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    t, observed, sends = 0.0, [], []
    while t < 3 * SETTINGS.suspect_timeout:
        t = round(t + SETTINGS.heartbeat_interval, 3)
        from_b = Message("b", 1, Heartbeat(("a", "b", "c"), direct=("a", "b", "c")))
        from_c = Message("c", 1, Heartbeat(("a", "b", "c"), direct=("b", "c")))
        state, actions = sm.step(state, sm.Receive(from_b), t)
        state, more = sm.step(state, sm.Receive(Message("b", 1, Relay("a", from_c))), t)
        state, ticked = sm.step(state, sm.Tick(), t + 0.001)
        observed += [a.change for a in actions + more + ticked if isinstance(a, sm.Observed)]
        sends += [(t, a) for a in ticked if isinstance(a, sm.Send)]
    assert observed == [("link_down", "c")]  # the link, not the peer: no loss, no removal
    assert state.my_hears == {"a", "b", "c"} and state.my_direct == {"a", "b"} and not state.majority_lost
    assert state.last_direct["c"] == 0.0 < state.last_heard["c"]
    relayed = [(t, a) for t, a in sends if isinstance(a.message.body, Relay)]
    assert relayed and all(a.to == "b" and a.message.body.to == "c" for _, a in relayed)
    assert min(t for t, _ in relayed) > SETTINGS.suspect_timeout / 2
    direct_to_c = [a for _, a in sends if a.to == "c"]
    assert direct_to_c  # the direct copy still goes: the link may come back


def test_a_cut_link_is_reported_at_once_not_with_the_next_heartbeat() -> None:
    """b stops hearing c directly (c's heartbeats come only through a): in the very step that
    notices it, b tells everyone, the coordinator included, whom it hears directly now."""
    from chaos_sidecar.protocol import Heartbeat, Relay

    state = sm.initial_member("b", VIEW, SETTINGS, 0.0)
    t = 0.0
    while True:
        t = round(t + 0.013, 3)  # ticks between heartbeats: the regular one is not due
        from_a = Message("a", 1, Heartbeat(("a", "b", "c"), direct=("a", "b", "c")))
        from_c = Message("c", 1, Heartbeat(("a", "b", "c"), direct=("a", "c")))
        state, _ = sm.step(state, sm.Receive(from_a), t)
        state, _ = sm.step(state, sm.Receive(Message("a", 1, Relay("b", from_c))), t)
        due = state.next_heartbeat
        state, actions = sm.step(state, sm.Tick(), t)
        if sm.Observed(("link_down", "c")) in actions:
            break
        assert t < SETTINGS.suspect_timeout, "the link never went down"
    assert t < due  # not the regular heartbeat
    reports = [a for a in actions if isinstance(a, sm.Send) and isinstance(a.message.body, Heartbeat)]
    assert {a.to for a in reports} >= {"a", "c"}
    assert all(a.message.body.direct == ("a", "b") for a in reports)


def test_the_coordinator_updates_the_link_table_when_a_report_moves_a_link() -> None:
    """A heartbeat whose direct set drops a peer changes the coordinator's table in that very
    step, not at its next tick; one that only repeats the last report changes nothing."""
    from chaos_sidecar.protocol import Heartbeat

    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    everyone = ("a", "b", "c")
    for t in (0.1, 0.2):
        for peer in ("b", "c"):
            state, _ = sm.step(state, sm.Receive(Message(peer, 1, Heartbeat(everyone, direct=everyone))), t)
        state, _ = sm.step(state, sm.Tick(), t)
    assert state.topology[1] == ()
    cut = Message("b", 1, Heartbeat(everyone, direct=("a", "b")))
    state, actions = sm.step(state, sm.Receive(cut), 0.25)
    changed = [a for a in actions if isinstance(a, sm.TopologyChanged)]
    assert changed and changed[0].down_links == (("b", "c"),)
    state, again = sm.step(state, sm.Receive(cut), 0.26)
    assert not [a for a in again if isinstance(a, sm.TopologyChanged)]
    healed = Message("b", 1, Heartbeat(everyone, direct=everyone))
    state, actions = sm.step(state, sm.Receive(healed), 0.27)
    assert [a.down_links for a in actions if isinstance(a, sm.TopologyChanged)] == [()]


def test_a_relay_passes_a_message_on_once_and_only_from_its_origin() -> None:
    from chaos_sidecar.protocol import Relay, ViewRequest

    state = sm.initial_member("b", VIEW, SETTINGS, 0.0)
    relay = Relay("c", Message("a", 1, ViewRequest()), "seal")
    _, actions = sm.step(state, sm.Receive(Message("a", 1, relay)), 0.1)
    assert [(a.to, a.message) for a in actions if isinstance(a, sm.Send)] == [("c", Message("b", 1, relay))]
    for sender, body in (("c", relay), ("a", Relay("a", Message("a", 1, ViewRequest())))):
        _, actions = sm.step(state, sm.Receive(Message(sender, 1, body)), 0.1)  # not its origin; to itself
        assert sm.Rejected("bad_relay") in actions and not any(isinstance(a, sm.Send) for a in actions)


def test_a_connected_majority_keeps_committing_through_a_hub() -> None:
    """Partial connectivity: ``bridge`` faults during the schedule, and a bridge left in place
    after the faults stop (two sides that reach each other only through one hub): the group
    still converges on exactly the live nodes, committing through the hub, and keeps that
    view (2 s: no removal of a live member, no re-admission)."""
    results = _run(range(200), nodes=5, final_bridge=True, hold_s=2.0)
    results += _run(range(100), nodes=7, final_bridge=True, hold_s=2.0)
    failures = [(r.seed, r.violations[0]) for r in results if r.violations]
    assert not failures, failures
    assert all(r.converged for r in results)
    assert sum(1 for r in results if r.bridged_commits) > 150  # most schedules commit while bridged


def test_simulator_catches_a_group_that_does_not_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without relaying, the members on either side of a bridge lose each other: the final
    bridge must expose that (the test above is not passing by accident)."""
    monkeypatch.setattr(sm, "_relays_for", lambda s, to: [])
    results = _run(range(20), nodes=5, final_bridge=True, hold_s=2.0)
    assert any("no convergence" in v for r in results for v in r.violations)


# --- ticking when due ----------------------------------------------------------------------


def test_quiet_member_is_due_at_its_heartbeat_or_first_expiry() -> None:
    from chaos_sidecar.protocol import Heartbeat

    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    state, actions = sm.step(state, sm.Tick(), 0.0)  # first heartbeat out
    assert sm.is_quiet(state)
    assert sm.next_due(state) == SETTINGS.heartbeat_interval
    everyone = ("a", "b", "c")
    for t in (0.05, 0.15, 0.25):  # b keeps beating, c falls silent after 0.05
        for sender in ("b", "c") if t == 0.05 else ("b",):
            state, _ = sm.step(state, sm.Receive(Message(sender, 1, Heartbeat(everyone))), t)
        state, _ = sm.step(state, sm.Tick(), sm.next_due(state))
    assert sm.is_quiet(state)
    # the first expiry: c no longer heard directly (half the timeout; relays take over then)
    direct_until = 0.05 + SETTINGS.suspect_timeout / 2
    assert sm.next_due(state) == pytest.approx(
        max(min(state.next_heartbeat, direct_until), state.last_tick + sm.MIN_TICK_GAP)
    )
    state, actions = sm.step(state, sm.Tick(), direct_until + 0.001)
    assert not sm.is_quiet(state)  # retry pace while c is heard through relays only, or not at all
    assert sm.next_due(state) == pytest.approx(state.last_tick + SETTINGS.retry_interval / 2)
    silent_until = 0.05 + SETTINGS.suspect_timeout  # c's last heartbeat, as a hearing and a report
    state, actions = sm.step(state, sm.Tick(), silent_until + 0.001)
    assert sm.Observed(("lost", "c")) in actions


def test_a_new_link_table_goes_out_on_the_tick_it_makes_due_at_once() -> None:
    """The coordinator learns of a cut link from a report: the step that changes its table
    sends no heartbeat of its own, the node is due at once, and that tick tells every member
    the new table without moving the heartbeats' own pace."""
    from chaos_sidecar.protocol import Heartbeat

    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    state, _ = sm.step(state, sm.Tick(), 0.0)
    everyone = ("a", "b", "c")
    for sender in ("b", "c"):
        state, _ = sm.step(state, sm.Receive(Message(sender, 1, Heartbeat(everyone))), 0.01)
    cut = Heartbeat(everyone, (0, 0), (), ("a", "b"))  # b hears c only through a relay now
    state, actions = sm.step(state, sm.Receive(Message("b", 1, cut)), 0.02)
    changed = [a for a in actions if isinstance(a, sm.TopologyChanged)]
    assert changed and changed[0].down_links == (("b", "c"),)
    assert not [a for a in actions if isinstance(a, sm.Send) and isinstance(a.message.body, Heartbeat)]
    assert sm.next_due(state) == pytest.approx(0.02)
    pace = state.next_heartbeat
    state, actions = sm.step(state, sm.Tick(), 0.02)
    sent = [a for a in actions if isinstance(a, sm.Send)]
    told = {a.to: a.message.body for a in sent if isinstance(a.message.body, Heartbeat)}
    assert set(told) == {"b", "c"}
    assert all(h.topology_version == changed[0].version for h in told.values())
    assert all(h.down_links == (("b", "c"),) for h in told.values())
    assert state.next_heartbeat == pace
    assert sm.next_due(state) > 0.02


def test_a_relayed_report_older_than_a_direct_one_does_not_replace_it() -> None:
    """b's link to c comes back: b's direct report (it hears c again) reaches the coordinator
    first, then a copy of an earlier report (sent while the link was down) arrives through a
    relay. The table must keep the link up; a relayed report is taken again once b has not been
    heard directly for a retry interval."""
    from chaos_sidecar.protocol import Heartbeat, Relay

    state = sm.initial_member("a", VIEW, SETTINGS, 0.0)
    state, _ = sm.step(state, sm.Tick(), 0.0)
    everyone = ("a", "b", "c")
    cut = Heartbeat(everyone, (0, 0), (), ("a", "b"))  # b hears c only through a relay
    for sender, body in (("c", Heartbeat(everyone)), ("b", cut)):
        state, _ = sm.step(state, sm.Receive(Message(sender, 1, body)), 0.01)
    state, _ = sm.step(state, sm.Tick(), 0.01)
    assert state.topology[1] == (("b", "c"),)
    state, _ = sm.step(
        state, sm.Receive(Message("b", 1, Heartbeat(everyone, state.topology[0], (), everyone))), 0.02
    )
    state, _ = sm.step(state, sm.Tick(), 0.02)
    assert state.topology[1] == ()
    old = sm.Receive(Message("c", 1, Relay("a", Message("b", 1, cut))))
    after, _ = sm.step(state, old, 0.025)
    after, _ = sm.step(after, sm.Tick(), 0.025)
    assert after.topology[1] == ()
    later, _ = sm.step(state, old, 0.02 + SETTINGS.retry_interval)
    assert later.direct_reports["b"] == frozenset(("a", "b"))


def test_due_ticks_converge_like_fixed_ticks() -> None:
    due = _run(range(100), nodes=5, due_ticks=True)
    assert not [r.violations for r in due if r.violations]
    assert all(r.converged for r in due)


def test_early_ticks_of_a_quiet_member_change_nothing() -> None:
    """With a tick at every retry half-interval, the simulator checks that every tick before a
    quiet node's ``next_due`` is a no-op: sleeping until then skips no work."""
    results = _run(range(100), nodes=5, due_ticks=False)
    assert not [r.violations for r in results if r.violations]


def test_a_late_deadline_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claim every quiet member is due a heartbeat interval later: the heartbeats a fixed
    tick sends before then expose it."""
    real = sm.next_due
    monkeypatch.setattr(sm, "next_due", lambda s: real(s) + SETTINGS.heartbeat_interval)
    results = _run(range(5), nodes=5, due_ticks=False, faults=frozenset())
    assert all(any("before its due" in v for v in r.violations) for r in results)
