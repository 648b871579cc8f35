"""Two sites on this machine (issue #25's floor): site A = 3 nodes of party a, site B = 2 nodes
of party b, every node in its own network namespace; the nodes of a site meet through their
site's router over unshaped links (LAN), the two routers through ONE link shaped to 20 Mbit/s
each way (WAN: chaos_lab.netns.Sites). Each node runs ``chaos-train run`` with its party's key
and the job's one admission policy; b's nodes join with ``--join``. Cross-party gradients take
the default, protected path (the parties' leaders exchange sealed partial sums), no
``--allow-cleartext-collectives``.

Scenario: A trains; B joins and all five train; a capture on the WAN link finds no clear-text
gradient while a capture on a LAN link of A finds them, and a control sent in clear across the
WAN is found; the WAN is cut (A, the majority, trains on; B takes no step); the WAN heals (B
trains with A again, by itself); B's nodes leave (TERM: the graceful leave); a node with b's
key claiming a's id a-9 and a node of party c (not in the policy) are refused by the members.
At the end: replicas identical at every step two members logged, 0 samples lost or
duplicated (chaos_lab.jobreport's per-sample accounting), and a report of the bytes each link
moved, from the kernel's counters (``report.json`` in the test's directory, and printed).

The marker: the training script (tests/data/scripts/marked_mlp.py) has a parameter whose
gradient is a fixed periodic pattern, so any sum of gradients carries ``pattern * k / 32 *
SCALE`` there for the k samples summed, exactly: the check looks for each k's bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chaos_lab import netns
from chaos_lab.jobreport import check_replicas, check_samples
from chaos_sidecar import eventlog, parties
from chaos_sidecar.eventlog import Kind
from party_files import five_node_parties

pytest.importorskip("torch", reason="the trainer needs the 'train' extra (torch)")
REASON = netns.unavailable()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"netns: {REASON}"), pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "data" / "scripts"
sys.path.insert(0, str(SCRIPTS))
from marked_mlp import PERIOD, SCALE, marker_pattern  # noqa: E402

CLI = [sys.executable, "-m", "chaos_sidecar.cli"]
BATCH = 32
WAN_BPS = 20e6 / 8  # 20 Mbit/s
DEADLINE_S = 90.0
CAPTURE_S = 6.0
NODES = ["a-0", "a-1", "a-2", "b0", "b1"]  # node i lives in namespace i: a-* at site 0, b* at 1
SITE_OF = {n: 0 if n.startswith("a") else 1 for n in NODES}


def needle(k: float) -> bytes:
    """Two periods of the marker's gradient summed over k samples of a global batch of 32."""
    return (
        (marker_pattern()[: 2 * PERIOD].astype(np.float64) * SCALE * k / BATCH).astype(np.float32).tobytes()
    )


def payloads(path: Path) -> list[bytes]:
    raw, out, at = path.read_bytes(), [], 0
    while at + 4 <= len(raw):
        size = int.from_bytes(raw[at : at + 4], "big")
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def found(captured: list[bytes], ks) -> list[float]:
    return [k for k in ks if any(needle(k) in p for p in captured)]


class Job:
    """The nodes' processes, their logs and the two sites."""

    def __init__(self, tmp_path: Path, sites: netns.Sites) -> None:
        self.tmp, self.sites = tmp_path, sites
        self.processes: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}
        self.termed: set[str] = set()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")} | {
            "OMP_NUM_THREADS": "1"
        }
        self.secret = tmp_path / "join-secret"
        self.secret.write_text("the-two-sites-join-secret")
        self.secret.chmod(0o600)

    def log(self, node: str) -> Path:
        return self.tmp / f"{node}.jsonl"

    def err(self, node: str) -> Path:
        return self.tmp / f"{node}.stderr"

    def start(self, node: str, ns: int, args: list[str]) -> None:
        with self.err(node).open("ab") as err:
            self.processes[node] = subprocess.Popen(
                self.sites.wrap(ns, [*CLI, *args]),
                stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                start_new_session=True,  # its sidecar and trainer with it: end() ends all three
            )  # fmt: skip

    def end(self) -> None:
        """Kill every node left, with its sidecar and trainer."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def run(self, node: str, how: list[str], key: Path, policy: Path) -> None:
        ns = NODES.index(node)
        self.start(node, ns, [
            "run", *how, "--node-id", node, "--host", self.sites.ip(ns), "--party-key", str(key),
            "--admission-policy", str(policy), "--secret-file", str(self.secret),
            "--event-log", str(self.log(node)), str(SCRIPTS / "marked_mlp.py"),
        ])  # fmt: skip

    def wait_for(self, condition, what: str, watch: list[str], timeout: float = DEADLINE_S) -> float:
        start = time.monotonic()
        while not condition():
            for node in watch:
                p = self.processes[node]
                tail = self.err(node).read_text()[-3000:]
                assert p.poll() is None, f"{what}: {node} exited {p.returncode}: {tail}"
            assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s" + "".join(
                f"\n--- {n}: {self.err(n).read_text()[-1500:]}" for n in watch
            )
            time.sleep(0.2)
        return time.monotonic() - start

    def url(self, node: str) -> str:
        marker = f"chaos-train run: sidecar of {node} at "
        self.wait_for(lambda: marker in self.err(node).read_text(), f"{node}'s sidecar", [node])
        return self.err(node).read_text().split(marker, 1)[1].split()[0]

    def records(self, nodes=NODES) -> list[eventlog.Record]:
        return eventlog.read([self.log(n) for n in nodes])

    def steps(self, node: str, world: int | None = None, after: float = 0.0) -> list[eventlog.Record]:
        return [
            r
            for r in self.records([node])
            if r.kind is Kind.STEP and r.t > after and (world is None or r.get("world") == world)
        ]

    def refused(self, reason: str) -> float:
        """Refusals for ``reason`` counted by a's members (read inside a-0's namespace: the
        sidecars answer on their sites' addresses only)."""
        urls = [self.urls[n] for n in ("a-0", "a-1", "a-2")]
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
            "from rejections import rejected_now; "
            f"print(sum(rejected_now(u).get({reason!r}, 0) for u in {urls!r}))"
        )
        out = subprocess.run(self.sites.wrap(0, [sys.executable, "-c", code]), capture_output=True, text=True,
                             timeout=30, env=self.env, check=True)  # fmt: skip
        return float(out.stdout.strip())

    def term(self, node: str) -> None:
        """One TERM (``chaos-train run`` forwards it: the node leaves after its step; a second
        one would end ``run`` while its sidecar leaves)."""
        if node not in self.termed and self.processes[node].poll() is None:
            self.termed.add(node)
            self.processes[node].send_signal(signal.SIGTERM)

    def stop(self, node: str) -> int:
        self.term(node)
        return self.processes[node].wait(timeout=60)


def capture(sites: netns.Sites, router_site: int, dev: str, out: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        ["ip", "netns", "exec", sites.router(router_site), sys.executable,
         str(SCRIPTS / "capture_payloads.py"), dev, str(CAPTURE_S), str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "capturing"
    return process


def send_in_clear(job: Job, data: bytes) -> None:
    """From a-2's namespace to b1's, over TCP: the control crossing the WAN in clear."""
    port = 47001
    listener = subprocess.Popen(
        job.sites.wrap(4, [sys.executable, "-c",
            f"import socket\ns = socket.create_server(('0.0.0.0', {port})); s.settimeout(20)\n"
            "c, _ = s.accept()\nwhile c.recv(65536): pass\nprint('received')"]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    sender = (
        "import socket, sys, time\nfor _ in range(50):\n    try:\n"
        f"        c = socket.create_connection(('{job.sites.ip(4)}', {port}), timeout=5); break\n"
        "    except OSError: time.sleep(0.1)\n"
        f"c.sendall(bytes.fromhex('{data.hex()}')); c.close()"
    )
    subprocess.run(job.sites.wrap(2, [sys.executable, "-c", sender]), check=True, timeout=30)
    assert listener.communicate(timeout=30)[0].strip() == "received"


def site_pulls(records: list) -> list[dict]:
    """Every pull of the state by b's nodes: through whom (``relay``, when both pulled in one
    view change), whether the other node of site B was a source, the plan, and the bytes taken
    from site B and over the WAN (chaos_train.sites)."""
    relays = {(f"state-e{r['epoch']}", r["node"]): r["relay"] for r in records
              if r.kind is Kind.REGROUP and "relay" in r}  # fmt: skip
    pulled = [r for r in records if r.kind is Kind.PULLED and r.node in ("b0", "b1")]
    both = {r["name"] for r in pulled if r.node == "b0"} & {r["name"] for r in pulled if r.node == "b1"}
    out = []
    for r in sorted(pulled, key=lambda r: r.t):
        per_source, node = r["per_source"], r.node
        neighbour = "b1" if node == "b0" else "b0"
        out.append({
            "snapshot": r["name"], "node": node, "together": r["name"] in both,
            "relay": relays.get((r["name"], node)), "from_neighbour": neighbour in r["planned"],
            "per_source": per_source, "planned_pieces": r["planned"],
            "wan_bytes": sum(b for s, b in per_source.items() if SITE_OF[s] != SITE_OF[node]),
            "lan_bytes": sum(b for s, b in per_source.items() if SITE_OF[s] == SITE_OF[node]),
        })  # fmt: skip
    return out


def link_report(before: dict, after: dict, sites: netns.Sites) -> dict:
    """Bytes each link carried between two readings of the counters, and what moved within
    each site and between them: a byte between two nodes of a site crosses both their links;
    a byte between sites crosses one link at each site and the WAN."""
    moved = {name: sum(after[name]) - sum(before[name]) for name in after}
    per_node = {node: moved[f"lan{i}"] for i, node in enumerate(NODES)}
    wan = moved["wan"]
    site_links = [sum(b for n, b in per_node.items() if SITE_OF[n] == s) for s in (0, 1)]
    return {
        "wan_rate_bits": int(WAN_BPS * 8),
        "bytes_per_link": {**{f"lan {n}": b for n, b in per_node.items()}, "wan": wan},
        "wan_a_to_b": after["wan"][1] - before["wan"][1],
        "wan_b_to_a": after["wan"][0] - before["wan"][0],
        "within_site_a": (site_links[0] - wan) // 2,
        "within_site_b": (site_links[1] - wan) // 2,
        "between_sites": wan,
    }


def test_two_sites_train_across_one_shaped_wan_link_through_cut_heal_and_leave(tmp_path: Path) -> None:
    files = five_node_parties(tmp_path)
    a_key, b_key, c_key = files.a_key, files.b_key, files.c_key
    policy, forged, outsider = files.policy, files.forged, files.outsider
    netns.remove_stale()
    report: dict = {"phases_s": {}}
    began = time.monotonic()
    with netns.Sites((3, 2), WAN_BPS) as sites:
        job = Job(tmp_path, sites)
        try:
            counters = {"start": sites.link_bytes()}
            # 1. site A founds the job and trains
            job.run("a-0", ["--new-group"], a_key, policy)
            job.urls["a-0"] = job.url("a-0")
            for node in ("a-1", "a-2"):
                job.run(node, ["--peers", f"a-0={job.urls['a-0']}"], a_key, policy)
            site_a = ["a-0", "a-1", "a-2"]
            report["phases_s"]["a_trains"] = job.wait_for(
                lambda: all(len(job.steps(n, world=3)) >= 3 for n in site_a), "site A training", site_a
            )
            # 2. party b joins from site B, through a's contact point; all five train
            for node in ("b0", "b1"):  # b names its site; a's nodes take their party's name
                job.run(node, ["--join", f"a-0={job.urls['a-0']}", "--site", "site-b"], b_key, policy)
            for node in ("a-1", "a-2", "b0", "b1"):
                job.urls[node] = job.url(node)
            report["phases_s"]["b_joins"] = job.wait_for(
                lambda: all(len([r for r in job.steps(n, world=5) if "digest" in r]) >= 1 for n in NODES),
                "five nodes training over the WAN", NODES,
            )  # fmt: skip
            for node in NODES:  # the groups spanning both parties were the protected ones
                mixed = [r for r in job.records([node]) if r.kind is Kind.REGROUP and len(r["members"]) == 5]
                assert mixed and all(r.get("cross_party") for r in mixed), node
            counters["trained"] = sites.link_bytes()

            # 3. what crosses the WAN while all five train: no gradient in clear
            wan_file, lan_file = tmp_path / "wan.capture", tmp_path / "lan-a-1.capture"
            wan = capture(sites, 0, sites.wan_link(0), wan_file)
            lan = capture(sites, 0, sites.lan_link(1), lan_file)
            control = needle(BATCH + 7)  # a sum no step makes, sent in clear from site A to site B
            send_in_clear(job, control * 4)
            wan_seen, _ = (p.communicate(timeout=30)[0].split()[-3:] for p in (wan, lan))
            wan_payloads, lan_payloads = payloads(wan_file), payloads(lan_file)
            sums = range(1, BATCH + 1)  # k samples summed
            report["capture"] = {
                "seconds": CAPTURE_S,
                "wan_frames": int(wan_seen[0]),
                "wan_frame_bytes": int(wan_seen[2]),
                "wan_payload_bytes": sum(map(len, wan_payloads)),
                "lan_a1_payload_bytes": sum(map(len, lan_payloads)),
                "gradient_sums_found_on_wan": found(wan_payloads, sums),
                "gradient_sums_found_on_lan_a1": found(lan_payloads, sums),
                "control_found_on_wan": found(wan_payloads, [BATCH + 7]) == [BATCH + 7],
            }
            assert report["capture"]["control_found_on_wan"], "the capture missed the control sent in clear"
            assert report["capture"]["wan_payload_bytes"] > len(control) * 4 + 100_000, report["capture"]
            seen = report["capture"]
            assert seen["gradient_sums_found_on_lan_a1"], "no gradient in clear inside party a: a blind check"
            assert seen["gradient_sums_found_on_wan"] == [], "a gradient crossed the WAN in clear"

            # 4. the WAN is cut: A (3 of 5) trains on, B (2 of 5) takes no step
            cut_at = time.time()
            sites.cut_wan()
            report["phases_s"]["a_trains_after_cut"] = job.wait_for(
                lambda: all(len(job.steps(n, world=3, after=cut_at)) >= 5 for n in site_a),
                "site A training without B", NODES,
            )  # fmt: skip
            for node in ("b0", "b1"):  # paused: no step since the cut (one in flight may land)
                late = [r["step"] for r in job.steps(node, after=cut_at + 2.0)]
                assert late == [], f"{node} stepped during the cut: {late}"
            # 5. it heals: B trains with A again, by itself
            healed_at = time.time()
            sites.heal_wan()
            report["phases_s"]["b_back_after_heal"] = job.wait_for(
                lambda: all(len(job.steps(n, world=5, after=healed_at)) >= 3 for n in NODES),
                "the five training again after the heal", NODES,
            )  # fmt: skip
            # 6. party b leaves: its nodes leave gracefully, A trains on
            left_at = time.time()
            for node in ("b0", "b1"):
                job.term(node)
            report["exit_codes"] = {node: job.stop(node) for node in ("b0", "b1")}
            for node in ("b0", "b1"):  # a graceful leave: the trainer says it left, the group goes on
                left = any(r.kind is Kind.LEFT for r in job.records([node]))
                assert left, job.err(node).read_text()[-3000:]
            report["phases_s"]["b_left"] = time.time() - left_at
            report["phases_s"]["a_alone_after_leave"] = job.wait_for(
                lambda: all(len(job.steps(n, world=3, after=left_at)) >= 3 for n in site_a),
                "site A training after B left", site_a,
            )  # fmt: skip
            # 7. from site B: b's key under a's id a-9, and party c (not in the policy): refused
            refusals_from = time.monotonic()
            contacts = ",".join(f"{n}={job.urls[n]}" for n in site_a)
            for node, ns, key, own in (("a-9", 3, b_key, forged), ("c0", 4, c_key, outsider)):
                job.start(node, ns, [
                    "sidecar", "--node-id", node, "--host", sites.ip(ns), "--peers", contacts,
                    "--party-key", str(key), "--admission-policy", str(own), "--secret-file", str(job.secret),
                ])  # fmt: skip
            for reason in (parties.FOREIGN_NODE, parties.UNKNOWN):
                watch = [*site_a, "a-9", "c0"]
                job.wait_for(lambda r=reason: job.refused(r) > 0, f"a refusal as {reason}", watch)
            report["phases_s"]["refusals"] = time.monotonic() - refusals_from
            counters["end"] = sites.link_bytes()
            stopping = time.monotonic()
            last = min(max(r["step"] for r in job.steps(n)) for n in site_a)
            for node in site_a:  # the end of the test, not of a scenario step: no wait for them
                job.term(node)
            time.sleep(2.0)
            report["exit_codes"] |= {node: job.processes[node].poll() for node in site_a}
            report["phases_s"]["a_stopped"] = time.monotonic() - stopping
        finally:
            job.end()
    report["total_s"] = round(time.monotonic() - began, 1)
    report["phases_s"] = {phase: round(s, 1) for phase, s in report["phases_s"].items()}

    records = job.records()
    identical, compared, problems = check_replicas(records)
    samples = check_samples(records, last)
    worlds = {r.get("world") for r in records if r.kind is Kind.STEP}
    members = {m for r in records if r.kind is Kind.REGROUP for m in r["members"]}
    report |= {
        "steps": last,
        "replicas_identical": identical,
        "replica_comparisons": compared,
        **samples,
        "links_training_five": link_report(counters["start"], counters["trained"], sites),
        "links_whole_run": link_report(counters["start"], counters["end"], sites),
    }
    report["site_pulls"] = site_pulls(records)
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    # a graceful leave ends the node with 0; A's nodes, TERMed together at the end, have either
    # left (0) or are still leaving (None: the last one waits for its leave to be agreed)
    assert report["exit_codes"]["b0"] == report["exit_codes"]["b1"] == 0, report["exit_codes"]
    assert all(report["exit_codes"][n] in (0, None) for n in site_a), report["exit_codes"]
    assert identical and compared >= 5, problems
    assert samples["samples_lost"] == 0 and samples["samples_duplicated"] == 0, samples
    assert samples["samples_seen"] == last * BATCH
    # whether b's nodes are admitted in one view change or one after the other (at their join,
    # and at their return after the heal), one of them pulls the state over the WAN first and
    # the other's plan then takes it from that one, over site B's LAN. The bytes may end up
    # otherwise: the state is 52 KB, so a pull is round trips, and the pull hands queued pieces
    # to whichever source answers first
    pulls = report["site_pulls"]
    assert any(p["from_neighbour"] for p in pulls), pulls
    for pull in pulls:
        planned, neighbour = pull["planned_pieces"], "b1" if pull["node"] == "b0" else "b0"
        if pull["from_neighbour"]:
            assert planned[neighbour] > sum(n for source, n in planned.items() if source != neighbour), pull
        else:
            assert pull["lan_bytes"] == 0 and pull["wan_bytes"] > 0, pull
        if pull["together"]:  # in one view change: b0, the first by id, over the WAN, b1 through it
            assert pull["relay"] == (None if pull["node"] == "b0" else "b0"), pull
    assert max(worlds) == 5 and members == set(NODES)  # a-9 and c0 never entered a group
    until_trained = report["links_training_five"]
    assert until_trained["between_sites"] > 0 and report["links_whole_run"]["between_sites"] > 0
    # the hierarchical all-reduce sends each party's partial sum once across the WAN and the
    # rest within the sites: most of what moved stayed inside a site
    assert until_trained["between_sites"] < until_trained["within_site_a"] + until_trained["within_site_b"]
