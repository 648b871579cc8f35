"""Deliberate protocol bugs, one at a time: the simulator must report each within its budget.

Each mutation is a textual change to ``membership/machine.py`` (the exact snippet must occur
once, so a mutation cannot silently stop applying when the code moves). The mutated source is
compiled into a module of its own and the simulator runs against it in place of the real one:
the budget is :data:`BUDGET` schedules of the default configuration (5 nodes, every fault),
stopping at the first violation. A mutation the simulator misses means the simulator (or the
invariants it checks) is too weak to keep the protocol honest.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from chaos_sidecar.membership import machine, sim
from chaos_sidecar.membership.sim import SimConfig, run_schedule

BUDGET = 600  # schedules of SimConfig() per mutation

MUTATIONS = {
    # a restart forgets what the acceptor promised and accepted (Paxos amnesia)
    "forget promised and accepted on restart": (
        "        s.promised,\n        s.accepted,\n        s.max_round,",
        "        None,\n        None,\n        s.max_round,",
    ),
    # a restarted coordinator may spend its fast-path ballot again, on another value
    "forget fast-path use on restart": (
        "        s.fast_used,\n        s.want_leave,",
        "        0,\n        s.want_leave,",
    ),
    # the proposer counts promises and acceptances given to another ballot of the epoch
    "count replies of another ballot": (
        "body.target != p.target or body.ballot != p.ballot:",
        "body.target != p.target:",
    ),
    # one acceptance short of a majority of the old view commits
    "commit without a majority of the old view": (
        '``e + 1``."""\n    return view.majority\n',
        '``e + 1``."""\n    return view.majority - 1\n',
    ),
    # a COMMIT of the epoch already installed is installed again (it clears the acceptor state)
    "install an epoch twice": (
        "            if view.epoch > s.epoch:\n                _install(s, view, now, out)",
        "            if view.epoch >= s.epoch:\n                _install(s, view, now, out)",
    ),
    # the state is written after the messages that depend on it have left
    "persist after sending": ("out.insert(0, Persist(after))", "out.append(Persist(after))"),
    # a new incarnation votes while its view still lists its previous life
    "a new incarnation votes at once": (
        "if view is None or not s.is_member:  # a new incarnation",
        "if view is None or s.node_id not in view.members:  # a new incarnation",
    ),
    # the slow path proposes its own changes although a promise carried an accepted value
    "ignore the accepted values promises carry": (
        "    if p.best is not None:\n        value, own = p.best[1], False",
        "    if False:\n        value, own = p.best[1], False",
    ),
    # an acceptor accepts a ballot lower than the one it promised
    "accept below the promise": (
        "    if s.promised is None or body.ballot >= s.promised:\n"
        "        s.promised = body.ballot\n        if s.accepted",
        "    if True:\n"
        "        s.promised = max(body.ballot, s.promised or body.ballot)\n        if s.accepted",
    ),
}


# mutations that only a busier schedule exposes (two ballots of one epoch in flight at once):
# more faults, over longer, and nodes that crash mid-agreement more often
HARDER = {
    "count replies of another ballot": SimConfig(fault_rate=12.0, fault_s=4.0, paxos_crash_p=0.5),
    # a node that comes back without its state while an agreement is in flight: with the
    # default mix the first schedule that shows it moves with the protocol's timing (seed 166,
    # then 256, then 708 as the link table's pushes moved); more such restarts show it early
    "a new incarnation votes at once": SimConfig(amnesia_p=0.8, paxos_crash_p=0.3),
}


def mutant(name: str) -> types.ModuleType:
    original, replacement = MUTATIONS[name]
    source = Path(machine.__file__).read_text()
    assert source.count(original) == 1, f"mutation {name!r} no longer applies to machine.py"
    module = types.ModuleType(f"{machine.__name__}_mutant")
    module.__file__ = machine.__file__
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        exec(compile(source.replace(original, replacement), machine.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


def first_violation(budget: int = BUDGET, config: SimConfig | None = None) -> tuple[int, str] | None:
    for seed in range(budget):
        result = run_schedule(seed, config or SimConfig())
        if result.violations:
            return seed, result.violations[0]
    return None


def test_the_unmodified_machine_compiles_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: the real source, loaded as a mutant would be, passes."""
    module = types.ModuleType(f"{machine.__name__}_copy")
    sys.modules[module.__name__] = module
    try:
        exec(compile(Path(machine.__file__).read_text(), machine.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    monkeypatch.setattr(sim, "sm", module)
    assert first_violation(20) is None
    for config in HARDER.values():
        assert first_violation(20, config) is None


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_simulator_catches(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim, "sm", mutant(name))
    found = first_violation(config=HARDER.get(name))
    assert found is not None, f"{BUDGET} schedules missed the mutation {name!r}"
    print(f"\n{name}: seed {found[0]}: {found[1][:160]}")
