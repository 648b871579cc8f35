"""The long-haul bench's own judgements: snapshots held on a node's volume, slopes per event, a
sampler that fails."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chaos_lab.benchmarks.long_haul import slope, snapshots_held
from chaos_lab.sampling import Sampler, SamplingFailed


def test_snapshots_held_counts_published_written_and_pulled_state_files_only(tmp_path: Path) -> None:
    files = {
        "state-e4.data": 100, "state-e4.manifest.json": 7,  # published
        "state-s9.data.tmp": 50,  # being written
        "state-e6.data.partial": 30,  # being pulled
        "grads-s3.data": 1000,  # an overlap's gradient log, bounded by its own length
    }  # fmt: skip
    for name, size in files.items():
        (tmp_path / name).write_bytes(bytes(size))
    assert snapshots_held(tmp_path) == (3, 180)
    assert snapshots_held(tmp_path / "gone") == (0, 0)  # a node not started yet


def test_a_slope_per_event_leaves_out_what_follows_the_group_size() -> None:
    events = [float(e) for e in range(40)]
    sizes = [4.0 + (e // 5) % 3 for e in range(40)]  # the group grows and shrinks as faults come
    follows_size = [10 + 5 * z for z in sizes]  # 5 connections per member, none leaked
    assert abs(slope(events, follows_size, sizes)) < 1e-9
    leaking = [y + 0.25 * e for y, e in zip(follows_size, events, strict=True)]
    assert abs(slope(events, leaking, sizes) - 0.25) < 1e-9
    assert slope(events, leaking) != slope(events, leaking, sizes)  # the plain fit mixes them
    assert slope(events, leaking, [4.0] * 40) == slope(events, leaking)  # a steady group: the plain fit


def test_a_sample_that_raises_fails_the_benchmark_instead_of_cutting_its_curves_short() -> None:
    raised = threading.Event()

    class Broken(Sampler):
        taken = 0

        def sample(self) -> bool:
            self.taken += 1
            raised.set()
            raise PermissionError("/proc/1/fd")

    broken = Broken(0.001, "resources")
    with pytest.raises(SamplingFailed, match="sampling resources failed: PermissionError"), broken:
        assert raised.wait(5)  # leaving the block joins the sampler's thread
    assert broken.taken == 1  # it stopped at the first failure
