"""The main job with every node in its own network namespace: own address, own directory,
shaped links that carry all traffic (membership, probes, shards, gradients)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos_lab import netns

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
REASON = netns.unavailable()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"netns: {REASON}"), pytest.mark.timeout(400)]


def _orphans() -> set[str]:
    """Harness namespaces, and their resolver files (``/etc/netns/<ns>``), whose maker is gone
    (others may belong to runs going on beside this test)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    names = {*listed, *(p.name for p in netns.NETNS_ETC.glob("*"))}
    return {
        name
        for name in names
        if (match := netns._NAME.match(name)) and not Path(f"/proc/{int(match.group(1), 16)}").exists()
    }


def test_job_in_namespaces_through_join_cut_crash_and_leave_keeps_replicas_and_nodes_apart(tmp_path) -> None:
    churn = tmp_path / "churn.json"
    churn.write_text(
        json.dumps(
            [
                {"at_step": 10, "event": "join", "node": "n4"},
                # a real cut: gloo between the two stalls until the harness heals it (by time,
                # once the group stops stepping) or the scripted step comes
                {"at_step": 120, "event": "link_down", "node": "n0", "peer": "n3"},
                {"at_step": 125, "event": "link_up", "node": "n0", "peer": "n3"},
                {"at_step": 150, "event": "crash", "node": "n1"},
                {"at_step": 170, "event": "leave", "node": "n2"},
            ]
        )
    )
    out = tmp_path / "out"
    before = _orphans()
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "local", "--nodes", "4", "--hosts", "netns",
         "--links", "skewed", "--hidden", "512", "--steps", "220", "--churn", str(churn), "--out", str(out)],
        capture_output=True, text=True, timeout=380,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hosts"] == "netns" and summary["foreign_opens"] == []
    assert summary["replicas_identical"] is True and summary["replica_comparisons"] > 5
    assert summary["samples_lost"] == 0 and summary["samples_duplicated"] == 0
    assert summary["samples_seen"] == summary["samples_expected"] == 220 * 256
    assert [e["kind"] for e in summary["events"]] == ["join", "link_down", "link_up", "crash", "leave"]
    join = summary["events"][0]
    sent = join["bytes_per_source"]
    assert join["kind"] == "join" and sum(sent.values()) > 0
    # every member is listed with its bytes. The probes ran while the group trained, so a slow
    # link busy with gradients looked slower than it is; a member the plan left out takes one
    # shard, which measures it, and more from the member finishing last while it helps
    assert set(sent) >= {"n0", "n1", "n2", "n3"}, sent
    assert sum(1 for b in sent.values() if b > 0) >= 3, sent
    assert join["sources"] == sorted(n for n, b in sent.items() if b > 0)
    assert max(sent, key=sent.get) == "n0", sent  # n0's link is the fastest (40 MB/s)
    # each node's files stayed in its own directory; every namespace is gone again
    for node in ("n0", "n1", "n2", "n3", "n4"):
        assert (out / "nodes" / node / f"{node}.trainer.jsonl").exists()
    assert not (out / "logs").exists() or not list((out / "logs").iterdir())
    assert _orphans() <= before


def test_links_file_with_an_unknown_node_is_refused_naming_it(tmp_path) -> None:
    links = tmp_path / "links.json"
    links.write_text('{"rates_mbps": {"n0": 40, "n9": 10}}')
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "local", "--hosts", "netns", "--links", str(links),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "rates_mbps.n9" in result.stderr
