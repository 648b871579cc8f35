"""The scale-out bench's storage model for checkpoint-restart and its headline comparison."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chaos_lab.benchmarks.scale_out import CHECKPOINT_RESTART, fair_shares, speedups, write_rates


def test_writers_share_the_storage_max_min_fair() -> None:
    assert fair_shares([1.0] * 4, 4.0) == [1.0] * 4  # the storage takes all the links give
    assert fair_shares([1.0] * 4, 2.0) == [0.5] * 4  # the storage is the bottleneck
    # a slow link keeps its rate, the others split what is left
    assert fair_shares([40.0, 20.0, 10.0, 10.0], 50.0) == [15.0, 15.0, 10.0, 10.0]
    assert sum(fair_shares([40.0, 20.0, 10.0, 10.0], 80.0)) == pytest.approx(80.0)


def test_one_rank_writes_over_its_own_link_within_the_storage_bandwidth() -> None:
    names = ["n0", "n1", "n2", "n3"]
    assert write_rates("one-rank", names, [40.0, 20.0, 10.0, 10.0], 80.0) == {"n0": 40.0}
    assert write_rates("one-rank", names, [40.0, 20.0, 10.0, 10.0], 25.0) == {"n0": 25.0}
    assert write_rates("sharded", names, [1.0] * 4, 4.0) == dict.fromkeys(names, 1.0)


def test_the_headline_is_the_variant_that_favours_the_baseline() -> None:
    results = {
        "chaos": {"delay_s": 20.0},
        "single-source": {"delay_s": 70.0},
        "checkpoint-restart-one-rank": {"delay_s": 140.0},
        "checkpoint-restart-sharded": {"delay_s": 40.0},
        "checkpoint-restart-periodic": {"delay_s": 30.0},
    }
    out = speedups(results, [1.0] * 4)
    assert out["checkpoint_restart_headline"] == "checkpoint-restart-periodic"
    assert out["speedup_vs_checkpoint_restart"] == 1.5
    assert out["speedup_vs_checkpoint_restart_variants"] == {
        "checkpoint-restart-one-rank": 7.0,
        "checkpoint-restart-sharded": 2.0,
        "checkpoint-restart-periodic": 1.5,
    }
    assert out["speedup_vs_single_source"] == 3.5
    assert "speedup_vs_equal_split" not in out  # on equal links equal-split is chaos's own plan
    assert set(CHECKPOINT_RESTART) == set(out["speedup_vs_checkpoint_restart_variants"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("--checkpoint-every", "3"), ("--storage-mbps", "0"), ("--methods", "checkpoint-restart")],
)
def test_cli_refuses_a_bad_storage_model_naming_the_option(option: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chaos_sidecar.cli", "bench", "--scenario", "scale-out", option, value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and "Traceback" not in result.stderr
