"""The scale-out bench's checkpoint-restart variants end to end: real plain workers stopped or
killed, the checkpoint through real sidecars' shaped links to storage and to the joiner, a real
restart at the new size. Slow (about a minute per variant on a loaded 2-core machine): run with
``-m slow``."""

from __future__ import annotations

import asyncio

import pytest

from chaos_lab.benchmarks.scale_out import CHECKPOINT_RESTART, measure

pytestmark = pytest.mark.slow


def test_every_variant_brings_the_joiner_past_the_old_group_and_counts_what_it_should(tmp_path) -> None:
    # a 1 MiB model steps in milliseconds: the kill, aimed at 20 steps after a checkpoint, lands
    # a few steps late, and 40 steps apart keep it before the next checkpoint
    out = asyncio.run(measure(list(CHECKPOINT_RESTART), [40.0, 20.0], 1, tmp_path, print, None, 40))
    assert out["storage"] == {"MBps": 60.0, "default": True, "checkpoint_every_steps": 40}
    for method, result in out["methods"].items():
        model = result["storage_model"]
        # written once, read once: the state plus the checkpoint's few bytes of step and sampler
        assert 2 * out["state_bytes"] <= result["bytes"] < 2 * (out["state_bytes"] + 4096)
        assert result["delay_s"] == pytest.approx(sum(result["breakdown_s"].values()), abs=0.01)
        if method == "checkpoint-restart-periodic":
            assert 20 <= model["lost_steps"] < 40 and result["breakdown_s"]["redo_lost_steps"] > 0
            assert model["background_write_s"] > 0 and "write_to_storage" not in result["breakdown_s"]
        else:
            assert model["lost_steps"] == 0 and result["breakdown_s"]["redo_lost_steps"] == 0
    assert out["methods"]["checkpoint-restart-one-rank"]["storage_model"]["write_rates_MBps"] == {"n0": 40.0}
    assert out["methods"]["checkpoint-restart-sharded"]["storage_model"]["write_rates_MBps"] == {
        "n0": 40.0,
        "n1": 20.0,
    }
