"""Scale-out scenario: one node joins a training group; each method of bringing it in is run
on the same machine, transport and links, one after the other in one run, so the ratios compare
like with like.

Every method starts N real nodes training the built-in model, sized so that model plus
optimizer state is ``--state-mb``; each source's upload to the joiner is rate limited per
link (the sidecar's token bucket). After a warm-up a joiner asks to join, and the delay is
measured from its request to its first completed training step in the bigger group.

- ``chaos``: the planned multi-source pull of the SDK's blocking join.
- ``chaos-overlap``: the same pull while the members keep training (overlap join).
- ``equal-split``: the blocking join with every source sending an equal share (Elan).
- ``single-source``: the blocking join with the joiner copying everything from one member
  (EDL, Horovod).
- ``checkpoint-restart-*`` (Pollux, Autoscaling, torchrun): a fixed torch.distributed group
  (no sidecars) goes down, its checkpoint reaches a storage node through shaped links, every
  process is restarted at the new size and the joiner reads the checkpoint from storage. The
  storage model is a parameter: its bandwidth (``--storage-mbps``, shared by the writers and
  the joiner's read; default the sum of the source rates, as fast as the sources chaos pulls
  from together), and three ways to get the checkpoint there, all run: ``one-rank`` (rank 0
  writes it all over its link at the request), ``sharded`` (every rank writes an equal share
  at once, each over its own link, max-min fair within the storage's bandwidth) and
  ``periodic`` (no write at the request: the last periodic checkpoint, ``--checkpoint-every``
  steps apart, was written earlier, and the steps since it are lost and redone after the
  restart, counted in the delay). Real process restarts, imports, loads and redone steps
  included; the members load their own local copy (generous to the baseline).

``limit_s = S / sum of source rates`` is the physical floor of moving the state to the
joiner; ``ratio_to_limit = delay_s / limit_s``. Each result carries a breakdown of where the
delay went, read from the processes' own logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from chaos_lab.baselines import equal_split, single_source
from chaos_lab.localcluster import LocalCluster
from chaos_lab.localjob import JobConfig, LocalJob
from chaos_sidecar import eventlog
from chaos_sidecar.cliutil import number, positive_float, positive_int
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind, Record
from chaos_sidecar.planning.model import Source
from chaos_sidecar.transfer.puller import Puller

ELASTIC = ("chaos", "chaos-overlap", "equal-split", "single-source")
LINK_PRESETS = {"equal": None, "skewed": [40.0, 20.0, 10.0, 10.0]}
SPLIT = {"equal-split": "equal-split", "single-source": "single-source"}  # else: the planner
WARMUP_STEPS = 3
FEATURES, CLASSES = 64, 10  # the built-in model's input and output widths (examples/train/mlp.py)
BIG_STEPS = 10**6  # trainers run until the harness stops them
DEADLINE_S = 900.0


def hidden_for(state_mb: float) -> int:
    """Width of the built-in MLP whose parameters plus SGD momentum take ``state_mb`` MiB."""
    params = state_mb * 1024 * 1024 / 8  # float32, twice (weights and momentum)
    # h^2 + (FEATURES + CLASSES + 2) h + CLASSES = params
    b = FEATURES + CLASSES + 2
    return max(8, int((-b + math.sqrt(b * b + 4 * (params - CLASSES))) / 2))


def state_bytes(hidden: int) -> int:
    params = FEATURES * hidden + hidden + hidden * hidden + hidden + hidden * CLASSES + CLASSES
    return 8 * params


def first(records: list[Record], kind: Kind, after: float = 0.0) -> Record | None:
    return next((r for r in records if r.kind is kind and r.t >= after), None)


def stop(processes) -> None:
    """Kill whatever of ``processes`` still runs (trainers run until the harness stops them)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- the elastic methods ---------------------------------------------------------------------------


async def run_elastic(method: str, rates: list[float], hidden: int, workdir: Path) -> dict[str, Any]:
    names = [f"n{i}" for i in range(len(rates))]
    config = JobConfig(
        nodes=len(rates), steps=BIG_STEPS, churn=[], out=workdir / method, live=False, digest_every=0,
        join_mode="overlap" if method == "chaos-overlap" else "blocking", hidden=hidden,
        transfer_split=SPLIT.get(method), upload_limits_mbps=dict(zip(names, rates, strict=True)),
    )  # fmt: skip
    job = LocalJob(config)
    try:
        async with job.cluster:
            await job.start_node(names[0], seed=True, founding=True)
            for node in names[1:]:
                await job.start_node(node, founding=True)
            await job.cluster.wait_agreed(set(names), 60)

            def warm() -> bool:
                job.poll_logs()
                failed = [n for n, p in job.trainers.items() if p.poll() is not None]
                if failed:
                    raise RuntimeError(f"trainer(s) {failed} exited; see {config.out}/logs")
                return all(job.progress.get(n, {}).get("step", 0) >= WARMUP_STEPS for n in names)

            await until(warm, 300, "the members to warm up")
            await job.start_node("joiner")
            joiner_log = job.trainer_log("joiner")

            def joined() -> bool:
                if job.trainers["joiner"].poll() is not None:
                    raise RuntimeError(f"the joiner exited; see {config.out}/logs")
                return first(eventlog.read([joiner_log]), Kind.STEP) is not None

            await until(joined, DEADLINE_S, "the joiner's first step")
    finally:
        stop(job.trainers.values())
    joiner = eventlog.read([joiner_log])
    requested = first(joiner, Kind.JOIN_REQUESTED)
    step = first(joiner, Kind.STEP)
    regroup = first(joiner, Kind.REGROUP)
    pulled = first(joiner, Kind.PULLED)
    assert requested and step and regroup and pulled, "joiner log incomplete"
    idle = []
    saves = []
    arrivals = []  # when each member reached the step boundary after the join was agreed
    for node in names:
        records = eventlog.read([job.trainer_log(node)])
        joined = [r for r in records if r.kind is Kind.REGROUP and r["epoch"] == regroup["epoch"]]
        saves += [r.get("save_ms", 0.0) / 1000 for r in joined]
        arrivals += [r.t - r["pause_ms"] / 1000 for r in joined]
        pauses = [r for r in records if r.kind in (Kind.REGROUP, Kind.OVERLAP_START) and r.t >= requested.t]
        idle.append(sum(r["pause_ms"] for r in pauses) / 1000)
    boundary = max(arrivals, default=regroup.t - regroup["pause_ms"] / 1000)
    grouped = regroup.t - regroup["pause_ms"] / 1000 + regroup["group_ms"] / 1000
    return {
        "delay_s": step.t - requested.t,
        "idle_s": sum(idle) / len(idle),
        "bytes": pulled["bytes"],
        "breakdown_s": {
            "agree_and_reach_step_boundary": boundary - requested.t,
            "transfer": pulled["seconds"],
            "process_group": grouped - boundary,
            "snapshot_save": max(saves, default=0.0),
            "pull_request": pulled["call_s"] - pulled["seconds"],
            "load": pulled["load_s"],
            "barriers": (regroup["pause_ms"] - regroup["group_ms"]) / 1000
            - max(saves, default=0.0)
            - pulled["call_s"]
            - pulled["load_s"],
            "first_step": step.t - regroup.t,
        },
        "bytes_per_source": pulled["per_source"],
    }


# --- checkpoint-restart ------------------------------------------------------------------------------

# how the checkpoint gets to storage (see the module's doc); every variant is run
CHECKPOINT_RESTART = {
    "checkpoint-restart-one-rank": "one-rank",
    "checkpoint-restart-sharded": "sharded",
    "checkpoint-restart-periodic": "periodic",
}
METHODS = (*ELASTIC, *CHECKPOINT_RESTART)
FEWEST_STEPS_PER_CHECKPOINT = 4  # the kill comes half an interval after one, before the next


def fair_shares(rates: list[float], total: float) -> list[float]:
    """Each writer's rate when writers whose own links allow ``rates`` write to one storage
    whose bandwidth is ``total`` at once: max-min fair (a writer slower than its share keeps
    its rate, the rest is split among the others)."""
    shares = [0.0] * len(rates)
    left = total
    order = sorted(range(len(rates)), key=lambda i: rates[i])
    for done, i in enumerate(order):
        shares[i] = min(rates[i], left / (len(rates) - done))
        left -= shares[i]
    return shares


def write_rates(variant: str, names: list[str], rates: list[float], storage_mbps: float) -> dict[str, float]:
    """Who writes the checkpoint to storage, each at what rate (MB/s)."""
    if variant == "one-rank":
        return {names[0]: min(rates[0], storage_mbps)}
    return dict(zip(names, fair_shares(rates, storage_mbps), strict=True))


def start_plain(
    node: str, rank: int, world: int, hidden: int, workdir: Path, rendezvous: Path, resume: bool,
    checkpoint_every: int | None = None,
) -> subprocess.Popen:  # fmt: skip
    directory = workdir / "checkpoints" / node
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "chaos_lab.plain_worker", "--node-id", node, "--world", str(world),
        "--rank", str(rank), "--store-dir", str(rendezvous), "--log", str(workdir / f"{node}.jsonl"),
        "--steps", str(BIG_STEPS), "--hidden", str(hidden), "--checkpoint-dir", str(directory),
    ]  # fmt: skip
    if resume:
        cmd += ["--resume", "checkpoint"]
    if checkpoint_every:
        cmd += ["--checkpoint-every", str(checkpoint_every)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(workdir / f"{node}.stderr").open("ab"))


def serving(directory: Path, rate_mbps: float) -> list[str]:
    return ["--snapshot-dir", str(directory), "--upload-limit-mbps", str(rate_mbps)]


def steps_of(log: Path) -> list[Record]:
    return [r for r in eventlog.read([log]) if r.kind is Kind.STEP]


async def run_checkpoint_restart(
    method: str, rates: list[float], hidden: int, workdir: Path, storage_mbps: float, checkpoint_every: int
) -> dict[str, Any]:
    """One checkpoint-restart variant. ``one-rank`` and ``sharded``: at the request the group
    stops at a step boundary, every rank saves, and the checkpoint goes to storage from rank 0
    alone or as an equal share from every rank; ``periodic``: the group is killed half a
    checkpoint interval after its last periodic checkpoint, which is written to storage
    afterwards, outside the measured delay (as if written in the background before the
    request), and the restarted group redoes the lost steps. Then the joiner reads the
    checkpoint from storage; the members load their own local copy (generous to the baseline).
    Delay: the request -> the joiner's first step beyond the last step taken before it."""
    variant = CHECKPOINT_RESTART[method]
    periodic = variant == "periodic"
    workdir = workdir / method
    names = [f"n{i}" for i in range(len(rates))]
    first_dir, second_dir = workdir / "rendezvous-1", workdir / "rendezvous-2"
    first_dir.mkdir(parents=True)
    second_dir.mkdir()
    every = checkpoint_every if periodic else None
    processes = [
        start_plain(n, r, len(names), hidden, workdir, first_dir, False, every) for r, n in enumerate(names)
    ]
    logs = {n: workdir / f"{n}.jsonl" for n in names}
    writers = write_rates(variant, names, rates, storage_mbps)
    async with LocalCluster(workdir / "links") as links:
        try:
            await until(lambda: len(steps_of(logs["n0"])) >= WARMUP_STEPS, 300, "the members to warm up")
            # the links: each writer's upload to storage, and storage's upload to the joiner
            (workdir / "storage").mkdir()
            urls = {}
            for node, rate in writers.items():
                started = await links.start(
                    node, seed=True, extra=serving(workdir / "checkpoints" / node, rate)
                )
                urls[node] = started.url
            storage = await links.start(
                "storage", seed=True, extra=serving(workdir / "storage", storage_mbps)
            )
            if periodic:
                await checkpoint_then_steps(logs["n0"], checkpoint_every // 2, processes)
                requested = time.time()
                stop(processes)  # nothing to save: the last periodic checkpoint is what is left
            else:
                requested = time.time()
                for p in processes:
                    p.send_signal(signal.SIGUSR1)
                for p in processes:
                    await asyncio.to_thread(p.wait, 120)
            stopped = time.time()
            last_step = max(r["step"] for n in names for r in steps_of(logs[n]))
            checkpoint = max(r["step"] for r in eventlog.read([logs["n0"]]) if r.kind is Kind.CHECKPOINT)
            if periodic and last_step - checkpoint >= checkpoint_every:
                raise RuntimeError(f"the kill came {last_step - checkpoint} steps after the checkpoint")
            async with aiohttp.ClientSession() as session:
                # storage stands for a remote object store: it receives over the writers' links ...
                split = single_source if len(writers) == 1 else equal_split
                write = Puller(
                    session, links.secret, "storage", workdir / "storage", "checkpoint", split=split
                )
                await write.pull([Source(n, 1.0) for n in writers], urls)
                written = time.time()
                # ... and the joiner reads over storage's link; members read their local copy
                joiner_dir = workdir / "checkpoints" / "joiner"
                joiner_dir.mkdir(parents=True)
                read = Puller(session, links.secret, "joiner", joiner_dir, "checkpoint", split=single_source)
                result = await read.pull([Source("storage", 1.0)], {"storage": storage.url})
                read_done = time.time()
            world = [*names, "joiner"]
            processes = [
                start_plain(n, r, len(world), hidden, workdir, second_dir, True) for r, n in enumerate(world)
            ]
            joiner_log = workdir / "joiner.jsonl"

            def beyond() -> bool:
                if any(p.poll() not in (None, 0) for p in processes):
                    raise RuntimeError(f"a restarted worker failed; see {workdir}")
                return any(r["step"] > last_step for r in steps_of(joiner_log))

            await until(beyond, DEADLINE_S, "the joiner's first step beyond the old group's last")
        finally:
            stop(processes)
    joiner = eventlog.read([joiner_log])
    step = first(joiner, Kind.STEP)
    caught_up = next(r for r in joiner if r.kind is Kind.STEP and r["step"] > last_step)
    loaded = first(joiner, Kind.LOADED)
    ready = first(joiner, Kind.GROUP_READY)
    assert step and loaded and ready
    total = result.manifest.total_bytes
    breakdown = {
        "stop_and_save": stopped - requested,
        "write_to_storage": written - stopped,
        "read_from_storage": read_done - written,
        "restart_and_load": loaded.t - read_done,
        "rendezvous": ready.t - loaded.t,
        "first_step": step.t - ready.t,
        "redo_lost_steps": caught_up.t - step.t,
    }
    background = 0.0
    if periodic:  # written before the request in the model: not part of the delay
        background = breakdown.pop("write_to_storage")
        breakdown["stop"] = breakdown.pop("stop_and_save")
    delay = caught_up.t - requested - background
    return {
        "delay_s": delay,
        "idle_s": delay,  # every member is down from the stop until the group is back where it was
        "bytes": 2 * total,
        "breakdown_s": breakdown,
        "storage_model": {
            "write": variant,
            "write_rates_MBps": writers,
            "read_rate_MBps": storage_mbps,
            "checkpoint_every_steps": every,
            "lost_steps": last_step - checkpoint,
            "background_write_s": background if periodic else None,
        },
    }


async def checkpoint_then_steps(log: Path, steps: int, processes: list[subprocess.Popen]) -> int:
    """Wait for the group's next periodic checkpoint, then for ``steps`` more steps; returns
    the checkpoint's step."""
    checkpoints: list[int] = []

    def checkpointed() -> bool:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a worker exited; see {log.parent}")
        checkpoints[:] = [r["step"] for r in eventlog.read([log]) if r.kind is Kind.CHECKPOINT]
        return bool(checkpoints)

    await until(checkpointed, 300, "a periodic checkpoint")
    target = checkpoints[-1] + steps
    await until(lambda: any(r["step"] >= target for r in steps_of(log)), 300, "the steps after it")
    return checkpoints[-1]


# --- the run --------------------------------------------------------------------------------------


def parse_links(links: str, sources: int, rate_mbps: float) -> list[float]:
    """``equal`` (every source at ``rate_mbps``), ``skewed`` (40/20/10/10 MB/s) or a scenario
    file: JSON ``{"rates_mbps": [...]}`` with one positive rate per source."""
    if links == "equal":
        return [rate_mbps] * sources
    if links in LINK_PRESETS:
        return list(LINK_PRESETS[links])  # type: ignore[arg-type]
    path = Path(links)
    try:
        rates = json.loads(path.read_text())["rates_mbps"]
    except FileNotFoundError:
        raise InputError(
            "--links", f"expected equal, skewed or a scenario file; {links!r} does not exist"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError("--links", f"{links}: expected JSON {{'rates_mbps': [...]}}: {exc}") from None
    if (
        not isinstance(rates, list)
        or not rates
        or not all(isinstance(r, int | float) and not isinstance(r, bool) and r > 0 for r in rates)
    ):
        raise InputError("--links", f"{links}: rates_mbps must be a non-empty list of positive numbers")
    return [float(r) for r in rates]


async def measure(
    methods: list[str], rates: list[float], state_mb: float, workdir: Path, log,
    storage_mbps: float | None = None, checkpoint_every: int = 10,
) -> dict[str, Any]:  # fmt: skip
    hidden = hidden_for(state_mb)
    size = state_bytes(hidden)
    limit = size / (sum(rates) * 1e6)
    storage = storage_mbps or sum(rates)
    results: dict[str, Any] = {}
    for method in methods:
        log(f"scale-out: {method} ...")
        if method in CHECKPOINT_RESTART:
            result = await run_checkpoint_restart(method, rates, hidden, workdir, storage, checkpoint_every)
        else:
            result = await run_elastic(method, rates, hidden, workdir)
        result["ratio_to_limit"] = result["delay_s"] / limit
        results[method] = _rounded(result)
        log(f"scale-out: {method} delay {result['delay_s']:.2f} s ({result['ratio_to_limit']:.2f} x limit)")
    out: dict[str, Any] = {
        "scenario": "scale-out",
        "sources": len(rates),
        "rates_MBps": rates,
        "state_bytes": size,
        "hidden": hidden,
        "limit_s": round(limit, 4),
        "storage": {
            "MBps": storage,
            "default": storage_mbps is None,  # the default: as fast as all the sources together
            "checkpoint_every_steps": checkpoint_every,
        },
        "methods": results,
    }
    out.update(speedups(results, rates))
    return out


def speedups(results: dict[str, Any], rates: list[float]) -> dict[str, Any]:
    """chaos against each baseline; against checkpoint-restart, the headline is the variant
    that fares best (the one that favours the baseline), every variant also listed."""
    chaos = results.get("chaos", {}).get("delay_s")
    if not chaos:
        return {}
    out: dict[str, Any] = {}
    for baseline in ("single-source", "equal-split"):
        if baseline in results and (baseline != "equal-split" or len(set(rates)) > 1):
            out[f"speedup_vs_{baseline.replace('-', '_')}"] = round(results[baseline]["delay_s"] / chaos, 3)
    variants = {m: results[m]["delay_s"] / chaos for m in CHECKPOINT_RESTART if m in results}
    if variants:
        headline = min(variants, key=variants.__getitem__)
        out["checkpoint_restart_headline"] = headline
        out["speedup_vs_checkpoint_restart"] = round(variants[headline], 3)
        out["speedup_vs_checkpoint_restart_variants"] = {m: round(v, 3) for m, v in variants.items()}
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", type=positive_int, default=4, help="members the joiner pulls from")
    parser.add_argument("--state-mb", type=positive_int, default=64, help="training state in MiB")
    parser.add_argument(
        "--links",
        default="equal",
        help="equal (every source at --rate-mbps), skewed (40/20/10/10 MB/s) or a scenario JSON file "
        "{'rates_mbps': [...]}",
    )
    parser.add_argument(
        "--rate-mbps", type=positive_float, default=1.0, help="per-source rate for --links equal"
    )
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default all)")
    parser.add_argument(
        "--storage-mbps",
        type=positive_float,
        help="checkpoint-restart: the storage's bandwidth in MB/s, for writing (shared by the "
        "writers) and for the joiner's read (default: the sum of the source rates)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=number(int, FEWEST_STEPS_PER_CHECKPOINT, strict=False),
        default=10,
        help="checkpoint-restart-periodic: steps between periodic checkpoints; the scale-out "
        f"comes half an interval after one (at least {FEWEST_STEPS_PER_CHECKPOINT}, default 10)",
    )


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    rates = parse_links(args.links, args.sources, args.rate_mbps)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError("--methods", f"unknown method(s) {unknown}; expected some of {list(METHODS)}")
    shm = Path("/dev/shm")  # the snapshot volume is memory-backed in the pod (emptyDir: Memory)
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="chaos-scaleout-", dir=parent) as tmp:
        return asyncio.run(
            measure(
                methods,
                rates,
                args.state_mb,
                Path(tmp),
                lambda line: print(line, file=sys.stderr, flush=True),
                args.storage_mbps,
                args.checkpoint_every,
            )
        )
