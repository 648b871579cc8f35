"""What a local job did, from its logs: the summary contract, the event timeline, the plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from chaos_lab.benchmarks.agreement import Injection, event_latency
from chaos_lab.churn import REMOVALS
from chaos_sidecar.eventlog import Kind, Record

_KIND_FOR_LATENCY = {
    "join": "join",
    "leave": "leave",
    "crash": "failure",
    "crash_sidecar": "failure",
    "crash_trainer": "leave",  # its sidecar leaves for it
    "link_down": "link_down",
    "link_up": "link_up",
}  # slow_link changes no view


def discarded_steps(trainer: list[Record]) -> set[int]:
    """The step records (by ``id``) whose state their member threw away: it loaded another
    state (a pull or a resume) before its next step. Such a step may differ from the one the
    group kept: a member cut off mid-step can complete an all-reduce that the others gave up
    (it received every contribution, they did not receive its own) and the others then take
    that step again without it. Nothing continues from the discarded state, so it is neither
    a replica to compare nor the step that used the samples; a state that lived on would
    show in the member's next steps."""
    out: set[int] = set()
    last: dict[str, Record] = {}
    for r in sorted(trainer, key=lambda r: r.t):
        if r.kind is Kind.STEP:
            last[r.node] = r
        elif r.kind in (Kind.PULLED, Kind.RESUMED) and r.node in last:
            out.add(id(last.pop(r.node)))
    return out


def check_replicas(trainer: list[Record]) -> tuple[bool, int, list[str]]:
    """Digests logged at the same step by different members must match (a step its member
    discarded aside, see discarded_steps)."""
    by_step: dict[int, dict[str, str]] = defaultdict(dict)
    discarded = discarded_steps(trainer)
    for r in trainer:
        if r.get("digest") and r.kind in (Kind.STEP, Kind.DIGEST, Kind.DONE) and id(r) not in discarded:
            by_step[r["step"]][r.node] = r["digest"]
    compared = 0
    problems = []
    for step, digests in sorted(by_step.items()):
        if len(digests) >= 2:
            compared += 1
            if len(set(digests.values())) != 1:
                problems.append(f"step {step}: {digests}")
    return not problems, compared, problems


def check_samples(trainer: list[Record], steps: int) -> dict[str, Any]:
    """Per-sample accounting from the sample ids the members say they used.

    Before each step's all-reduce a member logs its share (``share``: step, group, ids). A step
    counts in the group that took it last (its latest ``step`` record: a step a group redid,
    after losing the members that had taken it or after the job resumed from a checkpoint,
    counts once, as redone), with the union of the shares logged for it in that group: a
    share sent into a completed all-reduce is in the update even if its member died before
    logging the step; a step record its member discarded (see discarded_steps) is not that. Every
    step must use exactly the global batch's count of distinct ids and
    no id may appear twice within a data epoch (the sampler's epoch, logged with the step); so
    each complete data epoch uses every id but the ``dataset_size % global_batch`` its order
    drops. ``samples_redone`` counts the shares of steps taken again by a later group."""
    job = next((r for r in trainer if r.kind is Kind.JOB), None)
    if job is None:
        return {"sample_accounting": "none: no job record in the trainers' logs", "samples_lost": 0,
                "samples_duplicated": 0, "samples_expected": 0, "samples_seen": 0}  # fmt: skip
    size, batch = job["dataset_size"], job["global_batch"]
    committed: dict[int, tuple[str, int]] = {}  # step -> (group, data epoch), the latest record
    taken_by: dict[int, set[str]] = defaultdict(set)
    discarded = discarded_steps(trainer)
    for r in sorted((r for r in trainer if r.kind is Kind.STEP and r["step"] <= steps), key=lambda r: r.t):
        group = r.get("group") or str(r.get("epoch"))
        if id(r) not in discarded:
            committed[r["step"]] = (group, r["sampler"][0])
        taken_by[r["step"]].add(group)
    shares: dict[tuple[int, str], dict[str, list[int]]] = defaultdict(dict)
    for r in trainer:
        if r.kind is Kind.SHARE:
            shares[(r["step"], r.get("group") or str(r.get("epoch")))][r.node] = r["ids"]
    used: dict[int, list[int]] = defaultdict(list)  # data epoch -> ids, in step order
    short = redone = 0
    for step in range(1, steps + 1):
        if step not in committed:
            short += batch
            continue
        group, data_epoch = committed[step]
        ids = [i for part in shares.get((step, group), {}).values() for i in part]
        short += max(batch - len(set(ids)), 0)
        used[data_epoch] += ids
        redone += sum(len(i) for g in taken_by[step] - {group} for i in shares.get((step, g), {}).values())
    duplicated = sum(len(ids) - len(set(ids)) for ids in used.values())
    seen = sum(len(set(ids)) for ids in used.values())
    out_of_range = sum(1 for ids in used.values() for i in set(ids) if not 0 <= i < size)
    return {
        "sample_accounting": "ids",
        "samples_expected": steps * batch,
        "samples_seen": seen,
        "samples_lost": short,
        "samples_duplicated": duplicated + out_of_range,
        "samples_redone": redone,
    }


def event_rows(injected, sidecar: list[Record], trainer: list[Record]) -> list[dict[str, Any]]:
    rows = []
    for k, inj in enumerate(injected):
        ev = inj.event
        end = injected[k + 1].t if k + 1 < len(injected) else float("inf")
        subject = (ev.node, ev.peer) if ev.peer else (ev.node,)
        # records are matched by node names, so the window may outlast the next injection
        # (a joiner's trainer takes seconds to start)
        kind = _KIND_FOR_LATENCY.get(ev.event)
        latency = kind and event_latency(sidecar, Injection(kind, subject, inj.t, inj.t + 60))
        if ev.event == "join":  # the regroup that brought the joiner in, whenever it came
            regroups = [
                r for r in trainer if r.kind is Kind.REGROUP and r.t >= inj.t and ev.node in r["members"]
            ]
            first_epoch = min((r["epoch"] for r in regroups), default=None)
            regroups = [r for r in regroups if r["epoch"] == first_epoch]
        elif ev.event in REMOVALS:  # the regroup without the node
            regroups = [
                r for r in trainer if r.kind is Kind.REGROUP and r.t >= inj.t and ev.node not in r["members"]
            ]
            first_epoch = min((r["epoch"] for r in regroups), default=None)
            regroups = [r for r in regroups if r["epoch"] == first_epoch]
        else:  # link events change the topology, not the group: no regroup expected
            regroups = [r for r in trainer if r.kind is Kind.REGROUP and inj.t <= r.t < end]
        transfers = [r for r in regroups if r.get("needers")]
        transfer_ms = max((r["transfer_ms"] for r in transfers), default=0.0)
        bytes_per_source = _bytes_per_source(ev, inj.t, transfers, regroups, trainer)
        member_pause = {r.node: r["pause_ms"] for r in regroups if r.node not in (r.get("needers") or [])}
        if ev.event == "join":  # an overlap join: the bulk moved while the members trained
            caught = [r for r in trainer if r.kind is Kind.OVERLAP_CAUGHT_UP and r.node == ev.node]
            if caught:
                transfer_ms += caught[0]["transfer_ms"]
                for r in trainer:
                    if r.kind is Kind.OVERLAP_START and ev.node in r["joiners"]:
                        member_pause[r.node] = member_pause.get(r.node, 0.0) + r["pause_ms"]
        rows.append(
            {
                "kind": ev.event,
                "node": ev.node,
                "peer": ev.peer,
                "at_step": inj.step,
                "decision_ms": None if latency is None else round(latency["decision_ms"], 3),
                "agreement_ms": None if latency is None else round(latency["agreement_ms"], 3),
                "transfer_ms": round(transfer_ms, 1),
                "sources": sorted(s for s, n in bytes_per_source.items() if n > 0),  # those that sent
                "bytes_per_source": bytes_per_source,
                "member_pause_ms": round(max(member_pause.values(), default=0.0), 1),
            }
        )
    return rows


def _bytes_per_source(ev, t: float, transfers, regroups, trainer) -> dict[str, int]:
    """Bytes each member sent for the state transfer an event caused: the first pull (a
    trainer's ``pulled`` record) of the joiner, or of each node behind in its regroup, up to
    that regroup (a later retry's pull belongs to the failure that caused it)."""
    pullers = {ev.node} if ev.event == "join" else {n for r in transfers for n in r["needers"]}
    until = max((r.t for r in regroups), default=t)
    sent: dict[str, int] = defaultdict(int)
    for r in trainer:
        if r.kind is Kind.PULLED and r.node in pullers and t <= r.t <= until:
            pullers.discard(r.node)
            for source, count in r["per_source"].items():
                sent[source] += count
    return dict(sorted(sent.items()))


def summarize(cfg, injected, sidecar: list[Record], trainer: list[Record], wall_s: float) -> dict[str, Any]:
    steps_done = max((r["step"] for r in trainer if r.kind is Kind.STEP), default=0)
    last = [r for r in trainer if r.kind is Kind.STEP and r["step"] == steps_done]
    identical, compared, problems = check_replicas(trainer)
    idle: dict[str, float] = defaultdict(float)
    for r in trainer:
        if (
            r.kind is Kind.REGROUP and r.node not in (r.get("needers") or [])
        ) or r.kind is Kind.OVERLAP_START:
            idle[r.node] += r["pause_ms"] / 1000
    first_losses = [r["loss"] for r in trainer if r.kind is Kind.STEP and r["step"] <= 5]
    summary = {
        "steps": steps_done,
        "final_loss": last[0]["loss"] if last else None,
        "initial_loss": first_losses[0] if first_losses else None,
        "events": event_rows(injected, sidecar, trainer),
        "replicas_identical": identical and compared > 0,
        "replica_comparisons": compared,
        "replica_mismatches": problems[:5],
        **check_samples(trainer, steps_done),
        "idle_s_per_member": {n: round(s, 3) for n, s in sorted(idle.items())},
        "join_mode": cfg.join_mode,
        "wall_s": round(wall_s, 1),
        "nodes": cfg.nodes,
    }
    summary["ok"] = (
        summary["replicas_identical"]
        and summary["samples_lost"] == 0
        and summary["samples_duplicated"] == 0
        and steps_done == cfg.steps
    )
    return summary


def timeline_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"{'step':>5}  {'event':<10} {'node':<10} {'decision':>10} {'agreement':>10} "
        f"{'transfer':>10} {'pause':>9}  bytes per source"
    ]
    for e in summary["events"]:

        def ms(x):
            return "-" if x is None else f"{x:.1f}ms"

        node = e["node"] + (f"-{e['peer']}" if e["peer"] else "")
        lines.append(
            f"{e['at_step']:>5}  {e['kind']:<10} {node:<10} {ms(e['decision_ms']):>10} "
            f"{ms(e['agreement_ms']):>10} {ms(e['transfer_ms']):>10} {ms(e['member_pause_ms']):>9}  "
            f"{' '.join(f'{s}:{n / 1e6:.2f}MB' for s, n in e['bytes_per_source'].items() if n) or '-'}"
        )
    return lines


def plot(
    path: Path, summary: dict[str, Any], sidecar: list[Record], trainer: list[Record], t0: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=False)
    steps = [r for r in trainer if r.kind is Kind.STEP]
    by_step = {}
    for r in steps:
        by_step.setdefault(r["step"], r)
    xs = [by_step[s].t - t0 for s in sorted(by_step)]
    axes[0].step(xs, [by_step[s]["world"] for s in sorted(by_step)], where="post")
    axes[0].set_ylabel("members")
    axes[1].plot(xs, [by_step[s]["loss"] for s in sorted(by_step)])
    axes[1].set_ylabel("loss")
    axes[1].set_xlabel("seconds")
    events = summary["events"]
    labels = [f"{e['kind']}@{e['at_step']}" for e in events]
    axes[2].bar(range(len(events)), [e["agreement_ms"] or 0 for e in events], label="agreement ms")
    axes[2].bar(
        range(len(events)),
        [e["transfer_ms"] or 0 for e in events],
        bottom=[e["agreement_ms"] or 0 for e in events],
        label="transfer ms",
    )
    axes[2].set_xticks(range(len(events)), labels, rotation=20)
    axes[2].set_ylabel("ms")
    axes[2].legend()
    for ax in axes[:2]:
        for inj_t in summary.get("_event_times", []):
            ax.axvline(inj_t - t0, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
