"""A sidecar whose wall clock is minutes off (libfaketime shifts one real process's clock) is
refused by the group and told why in one clear line on both sides, with the skew on both
sides' metrics; it neither crashes nor gets in. A clock a few seconds off joins (the control:
the measurement follows the shift). A clock inside the window but past the start of a party
key's window gets that key refused with both clocks and the key's window named."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import scrape
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.adapters.peer_stream import STREAM_PATH
from chaos_sidecar.security import CLOCK_HEADER, signed_headers
from party_files import write_key
from polling import line_in

# Debian's libfaketime, preloaded straight into the sidecar (not through the `faketime`
# wrapper, which forks: killing the wrapper would leave the sidecar running)
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not LIBFAKETIME.exists(),
        reason="Debian's faketime is not installed (make test installs it when run as root)",
    ),
]
DEADLINE_S = 30.0


def skewed(offset: str):
    """Runs a command with its wall clock shifted by ``offset`` (e.g. ``+180s``). The monotonic
    clock is left alone, as on a real machine whose time of day is wrong: asyncio's timers and
    the failure detector run on it. ``env`` execs the command: the process is the sidecar."""
    preload = [f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME={offset}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
    return lambda cmd: ["env", *preload, *cmd]


async def metric(cluster: LocalCluster, node: str, name: str, **labels: str) -> float | None:
    assert cluster.session is not None
    return await scrape.metric(cluster.session, cluster.nodes[node].url, name, **labels)


async def stderr_line(path: Path, pattern: str) -> re.Match[str]:
    return await line_in(path, pattern, DEADLINE_S)


async def test_a_node_minutes_off_is_refused_with_a_clear_line_and_counted_on_both_sides(
    tmp_path: Path,
) -> None:
    async with LocalCluster(tmp_path) as cluster:
        await cluster.start("n0", seed=True)
        await cluster.wait_agreed({"n0"}, DEADLINE_S)
        await cluster.start("n1", wrap=skewed("+180s"))

        ahead = await stderr_line(
            tmp_path / "n0.stderr",
            r"warning: clock skew: peer n1's clock is (\d+) s ahead of ours; "
            r"requests are refused outside ±30 s",
        )
        behind = await stderr_line(
            tmp_path / "n1.stderr",
            r"warning: clock skew: peer n0's clock is (\d+) s behind ours; "
            r"requests are refused outside ±30 s",
        )
        assert 170 <= int(ahead[1]) <= 190 and 170 <= int(behind[1]) <= 190, (ahead[0], behind[0])

        # counted: n0 refused n1's requests as expired, n1 counts its requests refused as such
        assert (await metric(cluster, "n0", "chaostrain_rejected_messages_total", reason="expired") or 0) >= 1
        assert (await metric(cluster, "n1", "chaostrain_refused_by_peers_total", reason="expired") or 0) >= 1
        n0_sees = await metric(cluster, "n0", "chaostrain_clock_skew_seconds", peer="n1")
        n1_sees = await metric(cluster, "n1", "chaostrain_clock_skew_seconds", peer="n0")
        assert n0_sees is not None and 170 <= n0_sees <= 190, n0_sees
        assert n1_sees is not None and -190 <= n1_sees <= -170, n1_sees

        # not admitted, not crashed, and said once per episode, not at every retry
        view = await cluster.view("n0")
        assert view is not None and view["view"]["members"] == ["n0"], view
        assert cluster.nodes["n1"].process.poll() is None
        assert (tmp_path / "n1.stderr").read_text().count("clock skew: peer n0") == 1

        # a stranger (another secret) sending the same stale handshake learns nothing
        assert cluster.session is not None
        stale = signed_headers(b"x" * 32, "GET", STREAM_PATH, b"", time.time_ns() - 180 * 10**9, "n9")
        async with cluster.session.get(cluster.nodes["n0"].url + STREAM_PATH, headers=stale) as answer:
            assert answer.status == 401 and CLOCK_HEADER not in answer.headers, answer.headers

        # the control: a clock 5 s off is inside the window, joins, and its offset is measured
        await cluster.start("n2", contacts=["n0"], wrap=skewed("+5s"))
        await cluster.wait_agreed({"n0", "n2"}, DEADLINE_S)
        n2_offset = await metric(cluster, "n0", "chaostrain_clock_skew_seconds", peer="n2")
        assert n2_offset is not None and 3 <= n2_offset <= 7, n2_offset
        assert "clock skew: peer n2" not in (tmp_path / "n0.stderr").read_text()


async def test_a_party_key_not_yet_valid_on_the_verifiers_clock_is_refused_with_both_clocks(
    tmp_path: Path,
) -> None:
    """a-1's clock is 29.5 s ahead (inside the request window): on its clock the key's window
    has begun, on a-0's not yet. a-1 is told which peer refused its key, why, both clocks and
    the key's window; a-0 counts the refusal, and was told at start that its own key is not
    valid yet on its clock."""
    key, public = write_key(tmp_path, "a", 1)
    not_before = time.time() + 27  # between a-0's clock and a-1's for the next 27 s
    policy = tmp_path / "policy.yaml"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_before))
    policy.write_text(
        "version: 1\nparties:\n  - name: a\n    nodes: {prefix: a-}\n    max_nodes: 3\n"
        f"    keys: [{{public_key: {public}, not_before: '{stamp}'}}]\n"
    )
    party = ["--party-key", str(key), "--admission-policy", str(policy)]
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await cluster.start("a-0", seed=True, extra=party)
        await cluster.start("a-1", extra=party, wrap=skewed("+29.5s"))
        line = await stderr_line(
            tmp_path / "cluster" / "a-1.stderr",
            r"warning: party key of a refused by peer a-0 as not yet valid: its clock reads (\S+), "
            r"ours (\S+) \((\d+) s ahead of it\); the key's window: not_before (\S+), not_after none$",
        )
        assert time.time() < not_before, "the machine was too slow: the key's window began on a-0 too"
        # a-0, on the true clock, was told at start that its own key is not valid yet
        await stderr_line(
            tmp_path / "cluster" / "a-0.stderr",
            rf"warning: --party-key: its key {public} is not valid before {stamp} on this node's clock: "
            r"peers refuse its signatures outside the key's window$",
        )
        assert (
            "--party-key: its key" not in (tmp_path / "cluster" / "a-1.stderr").read_text()
        )  # valid on its clock
        assert 28 <= int(line[3]) <= 31 and line[4] == stamp, line[0]
        refused = await metric(
            cluster, "a-0", "chaostrain_rejected_messages_total", reason="party_key_not_yet_valid"
        )
        assert (refused or 0) >= 1
        counted = await metric(
            cluster, "a-1", "chaostrain_refused_by_peers_total", reason="party_key_not_yet_valid"
        )
        assert (counted or 0) >= 1
