"""Graceful leaves down to the last member: a group whose members all leave ends at once,
instead of its last leaver waiting for an agreement nobody is left to give."""

from __future__ import annotations

from chaos_sidecar.membership import machine as sm
from chaos_sidecar.protocol import View

SETTINGS = sm.Settings(0.1, 0.5, 0.05)
TICK_S = 0.01


def _group(*members: str) -> dict[str, sm.NodeState]:
    view = View(1, members, members[0], tuple(f"http://{m}" for m in members))
    return {m: sm.initial_member(m, view, SETTINGS, 0.0) for m in members}


def _run(states: dict[str, sm.NodeState], until_s: float) -> tuple[float, list[tuple[str, sm.Action]]]:
    """Every node ticks every TICK_S; what one sends reaches the other at once. Returns when
    every node has left (the time) or at ``until_s``, with every action taken."""
    taken: list[tuple[str, sm.Action]] = []
    now = 0.0
    while now < until_s:
        inbox = []
        for node in list(states):
            states[node], out = sm.step(states[node], sm.Tick(), now)
            taken += [(node, a) for a in out]
            inbox += [a for a in out if isinstance(a, sm.Send)]
        while inbox:
            send = inbox.pop(0)
            states[send.to], out = sm.step(states[send.to], sm.Receive(send.message), now)
            taken += [(send.to, a) for a in out]
            inbox += [a for a in out if isinstance(a, sm.Send)]
        if all(s.status == sm.LEFT for s in states.values()):
            return now, taken
        now = round(now + TICK_S, 6)
    return now, taken


def _leave(states: dict[str, sm.NodeState], *nodes: str) -> list[tuple[str, sm.Action]]:
    taken = []
    for node in nodes:
        states[node], out = sm.step(states[node], sm.RequestLeave(), 0.0)
        taken += [(node, a) for a in out]
    return taken


def _left_in_order(taken: list[tuple[str, sm.Action]]) -> list[str]:
    return [
        n
        for n, a in taken
        if isinstance(a, sm.LeftAlone) or (isinstance(a, sm.Installed) and a.status == sm.LEFT)
    ]


def test_both_members_of_a_pair_leaving_at_once_both_leave_within_two_ticks() -> None:
    states = _group("a", "b")
    requested = _leave(states, "a", "b")
    ended, taken = _run(states, until_s=5.0)
    taken = requested + taken
    assert {s.status for s in states.values()} == {sm.LEFT} and ended <= 2 * TICK_S, ended
    first, last = _left_in_order(taken)
    # the first one's leave was agreed: a view of the other alone, listing it as departed
    decided = [a.view for _, a in taken if isinstance(a, sm.Decided)]
    assert decided[-1].members == (last,) and first in decided[-1].departed


def test_a_group_whose_members_all_leave_at_once_ends() -> None:
    """The coordinator may hold every member's leave when it composes the next view: it keeps
    itself as the last member instead of proposing a view of nobody, then leaves alone."""
    states = _group("a", "b", "c")

    def to_coordinator(node: str) -> None:
        (forward,) = [a for _, a in _leave(states, node) if isinstance(a, sm.Send)]
        states["a"], _ = sm.step(states["a"], sm.Receive(forward.message), 0.0)

    to_coordinator("c")  # a proposes the group without c, and waits for b's vote ...
    to_coordinator("b")  # ... while b's leave
    _leave(states, "a")  # and its own come in
    ended, taken = _run(states, until_s=5.0)
    assert {s.status for s in states.values()} == {sm.LEFT} and ended <= 0.1, ended
    decided = [a.view for _, a in taken if isinstance(a, sm.Decided)]
    assert decided[-1].members == ("a",) and {"b", "c"} <= set(decided[-1].departed)


def test_a_pair_leaving_while_a_node_asks_to_join_hands_the_group_over_to_it() -> None:
    states = _group("a", "b")
    contacts = (("a", "http://a"), ("b", "http://b"))
    states["j"] = sm.initial_joiner("j", "http://j", contacts, SETTINGS)
    _leave(states, "a", "b")  # a decides the group of b alone; b's leave and j's join follow
    _run(states, until_s=1.0)
    assert states["a"].status == states["b"].status == sm.LEFT
    assert states["j"].status == sm.MEMBER and states["j"].view.members == ("j",)


def test_the_only_member_leaves_at_once() -> None:
    states = _group("a")
    taken = _leave(states, "a")
    assert states["a"].status == sm.LEFT
    assert isinstance(taken[0][1], sm.Persist) and taken[0][1].state.status == sm.LEFT  # written first
    assert [type(a) for _, a in taken[1:]] == [sm.Observed, sm.LeftAlone]
    assert sm.step(states["a"], sm.Tick(), 1.0) == (states["a"], [])  # and stays left


def test_a_leaving_member_of_three_still_waits_for_its_agreement() -> None:
    states = _group("a", "b", "c")
    _leave(states, "c")
    assert states["c"].status == sm.MEMBER  # no shortcut while others remain
    _run(states, until_s=0.5)
    assert states["c"].status == sm.LEFT and states["a"].view.members == ("a", "b")
    assert {states["a"].status, states["b"].status} == {sm.MEMBER}
