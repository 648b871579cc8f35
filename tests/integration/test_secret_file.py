"""A real sidecar warns at start about a join secret file readable by others (stderr and its
event log), and says nothing about one only its owner reads."""

from __future__ import annotations

import os
from pathlib import Path

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar import eventlog
from chaos_sidecar.eventlog import Kind


async def test_a_loose_secret_file_is_warned_about_at_start(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "loose") as cluster:
        os.chmod(cluster.secret_file, 0o644)
        await cluster.start("n0", seed=True)
        stderr = (tmp_path / "loose" / "n0.stderr").read_text()
        assert "warning: join secret file" in stderr and "readable by others (mode 0644)" in stderr, stderr
        records = eventlog.read([tmp_path / "loose" / "n0.events.jsonl"])
        assert [r["detail"] for r in records if r.kind is Kind.SECRET_FILE_LOOSE] == [
            f"{cluster.secret_file} is readable by others (mode 0644)"
        ]
    async with LocalCluster(tmp_path / "tight") as cluster:  # 0600, as LocalCluster writes it
        await cluster.start("n0", seed=True)
        await cluster.wait_agreed({"n0"}, 20)  # up and serving, past the check
        assert "warning" not in (tmp_path / "tight" / "n0.stderr").read_text()
        log = (tmp_path / "tight" / "n0.events.jsonl").read_text()
        assert "secret_file_loose" not in log
