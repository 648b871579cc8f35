"""Agreement scenario: real sidecar processes on loopback, each event kind injected repeatedly.

Per kind we report decision latency (event first seen by any node -> new view or topology
computed by the deciding node) and agreement latency (first seen -> committed or adopted
by every member), from the nodes' own JSONL event logs (wall clock, one machine). For
failures, detection (kill -> first suspicion) is reported separately: it is the failure
detector's timeout, not the protocol.

Where the milliseconds of a membership change go, per hop (``hops_ms``): ``quorum`` from the
decision to the vote that completes a majority of the old view (the accept round trip,
each vote written to its voter's disk first), ``commit`` from the decision to the deciding
node's own install, and ``spread`` from that install to the last member's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_lab.localcluster import POLL_S, LocalCluster
from chaos_lab.stats import summary
from chaos_sidecar.cliutil import positive_int
from chaos_sidecar.eventlog import Kind, Record

KINDS = ("join", "leave", "failure", "coordinator_failure", "link_down", "link_up")


@dataclass
class Injection:
    kind: str
    subject: tuple[str, ...]
    injected_at: float
    done_at: float = 0.0
    members_after: frozenset[str] = frozenset()


@dataclass
class Measured:
    decision_ms: list[float] = field(default_factory=list)
    agreement_ms: list[float] = field(default_factory=list)
    detection_ms: list[float] = field(default_factory=list)
    hops_ms: dict[str, list[float]] = field(default_factory=dict)
    missing: int = 0


def _first(records: list[Record], since: float, until: float, pred) -> Record | None:
    return next((r for r in records if since <= r.t <= until and pred(r)), None)


def event_latency(records: list[Record], inj: Injection) -> dict[str, float] | None:
    """Decision / agreement (and for failures detection) milliseconds of one injected event,
    from the nodes' logs; None when the logs do not show it complete. ``inj.members_after``
    empty means "the members of the view that the decision produced" (or, for a topology
    change, of the view in force)."""
    lo, hi = inj.injected_at, inj.done_at + 0.001
    if inj.kind in ("join", "leave"):
        change = [inj.kind, inj.subject[0]]
        seen = _first(records, lo, hi, lambda r: r.kind is Kind.OBSERVED and r["change"] == change)
        decided = _first(records, lo, hi, lambda r: r.kind is Kind.DECIDED and change in r["changes"])
    elif inj.kind in ("failure", "coordinator_failure"):
        victim = inj.subject[0]
        seen = _first(records, lo, hi, lambda r: r.kind is Kind.OBSERVED and r["change"] == ["lost", victim])
        decided = _first(
            records, lo, hi, lambda r: r.kind is Kind.DECIDED and ["remove", victim] in r["changes"]
        )
    else:
        a, b = inj.subject
        # a cut link is seen as a link lost (relays may keep the peer heard), or a peer lost
        words = ("link_down", "lost") if inj.kind == "link_down" else ("link_up", "regained")
        seen = _first(
            records,
            lo,
            hi,
            lambda r: (
                r.kind is Kind.OBSERVED
                and r["change"][0] in words
                and ((r.node == a and r["change"][1] == b) or (r.node == b and r["change"][1] == a))
            ),
        )
        link = sorted([a, b])
        want_down = inj.kind == "link_down"
        decided = _first(
            records, lo, hi, lambda r: r.kind is Kind.TOPOLOGY and (link in r["down"]) == want_down
        )
    if seen is None or decided is None:
        return None
    members = set(inj.members_after)
    if decided.kind is Kind.DECIDED:
        members = members or set(decided["members"])
        installs = [r for r in records if r.kind is Kind.INSTALLED and r["epoch"] == decided["epoch"]]
        installs = [r for r in installs if r.node in members]
        done = {r.node for r in installs}
    else:
        if not members:
            views = [r for r in records if r.kind is Kind.INSTALLED and r.t <= decided.t]
            members = set(views[-1]["members"]) if views else set()
        # a member holds the change once it holds this table or a later one with the link the
        # same way: tables that change within one step of the coordinator go out as one
        version, link, want_down = decided["version"], sorted(inj.subject), inj.kind == "link_down"
        firsts: dict[str, Record] = {}
        for r in records:
            if (
                r.kind is Kind.TOPOLOGY
                and r.node in members
                and r.node not in firsts
                and decided.t <= r.t <= hi
                and r["version"] >= version
                and (link in r["down"]) == want_down
            ):
                firsts[r.node] = r
        installs = list(firsts.values())
        done = {r.node for r in installs} | {decided.node}
    if not members <= done:
        return None
    last = max([r.t for r in installs] + [decided.t])
    out = {
        "decision_ms": (decided.t - seen.t) * 1000,
        "agreement_ms": (last - seen.t) * 1000,
    }
    if decided.kind is Kind.DECIDED:
        out |= _hops(records, decided, installs, last)
    if inj.kind in ("failure", "coordinator_failure"):
        out["detection_ms"] = (seen.t - inj.injected_at) * 1000
    return out


def _hops(records: list[Record], decided: Record, installs: list[Record], last: float) -> dict[str, float]:
    """The decision's way to every member, hop by hop (see the module's docstring)."""
    changes = [tuple(c) for c in decided["changes"]]
    before = set(decided["members"]) - {n for k, n in changes if k == "join"}
    before |= {n for k, n in changes if k in ("leave", "remove")}
    votes = sorted(r.t for r in records if r.kind is Kind.VOTED and r["epoch"] == decided["epoch"])
    own = next((r.t for r in installs if r.node == decided.node), None)
    out = {}
    quorum = len(before) // 2 + 1
    if len(votes) >= quorum:
        out["quorum_ms"] = (votes[quorum - 1] - decided.t) * 1000
    if own is not None:
        out["commit_ms"] = (own - decided.t) * 1000
        out["spread_ms"] = (last - own) * 1000
    return out


def analyse(records: list[Record], injections: list[Injection]) -> dict[str, Measured]:
    out = {kind: Measured() for kind in KINDS}
    for inj in injections:
        m = out[inj.kind]
        latency = event_latency(records, inj)
        if latency is None:
            m.missing += 1
            continue
        m.decision_ms.append(latency["decision_ms"])
        m.agreement_ms.append(latency["agreement_ms"])
        if "detection_ms" in latency:
            m.detection_ms.append(latency["detection_ms"])
        for hop in ("quorum", "commit", "spread"):
            if f"{hop}_ms" in latency:
                m.hops_ms.setdefault(hop, []).append(latency[f"{hop}_ms"])
    return out


async def _topology_settled(
    cluster: LocalCluster, members: set[str], link: list[str], down: bool, timeout: float
) -> None:
    """Same view everywhere, and every member holds one topology version with ``link``
    down (or up)."""

    def check(v: dict) -> bool:
        return (link in v["topology"]["down"]) == down

    deadline = time.monotonic() + timeout
    while True:
        await cluster.wait_agreed(members, timeout, check=check)
        views = await cluster.views(sorted(members))
        if len({tuple(v["topology"]["version"]) for v in views.values() if v}) == 1:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topology did not settle: {views}")
        await asyncio.sleep(POLL_S)


async def measure(nodes: int, repeats: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    injections: list[Injection] = []
    started = time.monotonic()
    async with LocalCluster(workdir) as cluster:
        await cluster.start("n0", seed=True)
        for i in range(1, nodes):
            await cluster.start(f"n{i}")
        members = {f"n{i}" for i in range(nodes)}
        await cluster.wait_agreed(members, 30)
        counter = nodes

        async def fresh_node() -> str:
            nonlocal counter
            name = f"n{counter}"
            counter += 1
            return name

        for _ in range(repeats):
            # join, then the same node leaves: the group is back to its size
            name = await fresh_node()
            inj = Injection("join", (name,), time.time())
            await cluster.start(name)
            members = members | {name}
            await cluster.wait_agreed(members)
            inj.done_at, inj.members_after = time.time(), frozenset(members)
            injections.append(inj)

            inj = Injection("leave", (name,), time.time())
            await cluster.leave(name)
            members = members - {name}
            await cluster.wait_agreed(members)
            inj.done_at, inj.members_after = time.time(), frozenset(members)
            injections.append(inj)

            for kind in ("failure", "coordinator_failure"):
                view = (await cluster.view(sorted(members)[0]))["view"]
                victim = (
                    view["coordinator"]
                    if kind == "coordinator_failure"
                    else rng.choice([m for m in view["members"] if m != view["coordinator"]])
                )
                inj = Injection(kind, (victim,), time.time())
                cluster.kill(victim)
                members = members - {victim}
                await cluster.wait_agreed(members)
                inj.done_at, inj.members_after = time.time(), frozenset(members)
                injections.append(inj)
                replacement = await fresh_node()  # keep the size (its join is not measured)
                await cluster.start(replacement)
                members = members | {replacement}
                await cluster.wait_agreed(members)

            a, b = rng.sample(sorted(members), 2)
            link = sorted([a, b])
            inj = Injection("link_down", (a, b), time.time())
            await cluster.block(a, b)
            await _topology_settled(cluster, members, link, True, 20)
            inj.done_at, inj.members_after = time.time(), frozenset(members)
            injections.append(inj)

            inj = Injection("link_up", (a, b), time.time())
            await cluster.block(a, b, unblock=True)
            await _topology_settled(cluster, members, link, False, 20)
            inj.done_at, inj.members_after = time.time(), frozenset(members)
            injections.append(inj)
        records = cluster.read_logs()
        settings = cluster.settings
    measured = analyse(records, injections)
    kinds = {}
    for kind, m in measured.items():
        entry = {
            "n": len(m.decision_ms),
            "missing": m.missing,
            "decision_ms": summary(m.decision_ms),
            "agreement_ms": summary(m.agreement_ms),
        }
        if m.detection_ms:
            entry["detection_ms"] = summary(m.detection_ms)
        if m.hops_ms:
            entry["hops_ms"] = {hop: summary(values) for hop, values in m.hops_ms.items()}
        kinds[kind] = entry
    return {
        "scenario": "agreement",
        "nodes": nodes,
        "repeats": repeats,
        "transport": "one WebSocket per pair of sidecars over loopback, every frame HMAC-signed",
        "durable_state": "every sidecar writes its durable state (--state-dir) before it sends",
        "settings": {
            "heartbeat_s": settings.heartbeat_interval,
            "suspect_timeout_s": settings.suspect_timeout,
            "retry_s": settings.retry_interval,
        },
        "kinds": kinds,
        "membership_unchanged_by_link_events": True,
        "run_s": round(time.monotonic() - started, 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=positive_int, default=8, help="sidecar processes")
    parser.add_argument("--repeats", type=positive_int, default=30, help="events per kind")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-agreement-") as tmp:
        return asyncio.run(measure(args.nodes, args.repeats, Path(tmp)))
