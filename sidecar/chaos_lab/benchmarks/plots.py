"""PNG figures for benchmark results (``chaos-train bench ... --plot FILE``); matplotlib is
imported only here, and only when a figure is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scale_out(result: dict[str, Any], path: Path) -> None:
    """Stacked bars: where each method's scale-out delay went; the physical limit as a line."""
    plt = _pyplot()
    methods = list(result["methods"])
    labels = [m.replace("checkpoint-restart-", "checkpoint-\nrestart-") for m in methods]  # long names
    parts: list[str] = []
    for m in methods:
        parts += [p for p in result["methods"][m]["breakdown_s"] if p not in parts]
    fig, ax = plt.subplots(figsize=(11, 5))
    bottoms = [0.0] * len(methods)
    palette = plt.get_cmap("tab20").colors
    for i, part in enumerate(parts):
        values = [max(0.0, result["methods"][m]["breakdown_s"].get(part, 0.0)) for m in methods]
        ax.bar(labels, values, bottom=bottoms, label=part.replace("_", " "), color=palette[i % len(palette)])
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.axhline(
        result["limit_s"], color="black", linestyle="--", label=f"physical limit {result['limit_s']:.2f} s"
    )
    for i, m in enumerate(methods):
        r = result["methods"][m]
        ax.text(
            i,
            bottoms[i],
            f"{r['delay_s']:.1f} s\n({r['ratio_to_limit']:.2f}x)",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    rates = "/".join(f"{r:g}" for r in result["rates_MBps"])
    ax.set_title(f"scale-out delay, {result['state_bytes'] / 2**20:.0f} MiB state, sources at {rates} MB/s")
    ax.set_ylabel("seconds (join requested -> first step)")
    ax.set_ylim(top=max(bottoms) * 1.15)  # room for the labels above the bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scalability(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r["members"] for r in result["results"]]
    for key in (
        "heartbeat",
        "tick",
        "failure_tick",
        "join_decision",
        "leave_decision",
        "failure_decision",
        "failure_table_push",
        "plan_4096_shards",
    ):
        ax.plot(
            sizes,
            [r[key]["p50_us"] / 1000 for r in result["results"]],
            marker="o",
            label=key.replace("_", " "),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("members (simulated)")
    ax.set_ylabel("ms per step (median)")
    ax.set_title("decision cost as the group grows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def events(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    rows = result["table"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["event"] for r in rows]
    x = range(len(rows))
    for offset, key in ((-0.3, "decision_p50_ms"), (-0.1, "decision_p99_ms"), (0.1, "agreement_p50_ms"),
                        (0.3, "agreement_p99_ms")):  # fmt: skip
        ax.bar([i + offset for i in x], [r[key] or 0 for r in rows], width=0.2, label=key.replace("_", " "))
    ax.set_xticks(list(x), names, rotation=15)
    ax.set_ylabel("ms")
    ax.set_title(f"event handling, {result['nodes']} sidecar processes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTTERS = {"scale-out": scale_out, "scalability": scalability, "events": events}
