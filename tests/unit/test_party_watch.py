"""The party files' watcher on real files (chaos_sidecar.adapters.party_watch): a new key whose
window has not begun is refused once and taken when it begins; files that cannot be read are
counted once per episode and the pair in force stays."""

from __future__ import annotations

from pathlib import Path

from chaos_sidecar.adapters.party_watch import PartyFilesWatch
from chaos_sidecar.config import read_party_files, with_parties
from chaos_sidecar.eventlog import EventLog
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.security import RotatingSecret
from party_files import write_key

T = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def count(metrics: SidecarMetrics, file: str, result: str) -> float:
    return metrics.registry.get_sample_value(
        "chaostrain_party_reloads_total", {"file": file, "result": result}
    )


def test_a_key_not_yet_valid_waits_for_its_window_and_unreadable_files_keep_the_pair(tmp_path: Path) -> None:
    (old, old_public), (new, new_public) = write_key(tmp_path, "a", 1), write_key(tmp_path, "a", 2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nparties:\n  - {name: a, nodes: {prefix: a-}, max_nodes: 2, keys: [\n"
        f"      {{public_key: {old_public}}},\n"
        f"      {{public_key: {new_public}, not_before: '2027-01-15T08:01:40Z'}}]}}\n"
    )
    key = tmp_path / "party.key"
    key.write_bytes(old.read_bytes())
    secret = with_parties(RotatingSecret(b"s" * 32), read_party_files(str(key), str(policy), "a-0"))
    metrics, now = SidecarMetrics(), [T]
    watch = PartyFilesWatch(
        key, policy, "a-0", secret, metrics, EventLog(tmp_path / "log", "a-0"), lambda: now[0]
    )

    key.write_bytes(new.read_bytes() + b"\n")  # a new version of the file (size differs)
    watch.poll()
    watch.poll()  # checked again, not said again
    assert count(metrics, "key", "refused") == 1 and secret.party.public_key == old_public  # type: ignore[union-attr]
    now[0] = T + 100  # 08:01:40: the new key's window begins
    watch.poll()
    assert count(metrics, "key", "accepted") == 1 and secret.party.public_key == new_public  # type: ignore[union-attr]

    in_force = secret.policy
    policy.unlink()
    watch.poll()
    watch.poll()
    assert count(metrics, "policy", "unreadable") == 1 and secret.policy is in_force
    records = (tmp_path / "log").read_text()
    assert records.count('"result":"refused"') == 1 and "not valid before 2027-01-15T08:01:40Z" in records
