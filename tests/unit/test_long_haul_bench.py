"""The long-haul bench's own judgements: what counts as a snapshot held on a node's volume."""

from __future__ import annotations

from pathlib import Path

from chaos_lab.benchmarks.long_haul import snapshots_held


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
