"""The pod's contract: every example's pod, as the operator builds it, runs as shipped; reports
are checked before the operator folds them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from chaos_operator.domain.builders import build_pod
from chaos_operator.domain.spec import parse_job
from chaos_sidecar import trainer_env
from chaos_sidecar.cli import build_parser
from chaos_sidecar.commands.sidecar import config_from_args
from chaos_sidecar.errors import InputError
from chaos_sidecar.parties import new_key_file
from chaos_sidecar.pod_contract import (
    PARTY_KEY_FILE,
    POLICY_FILE,
    REPORT_MAX_BYTES,
    SECRET_FILE,
    encode_report,
    parse_report,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of a container's command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def _resolved_env(pod: dict, container: dict) -> dict[str, str]:
    fields = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": "ml",
        "status.podIP": "10.1.2.3",
    }
    out = {}
    for e in container.get("env") or []:
        out[e["name"]] = e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("index,founding", [(0, True), (1, True), (5, False)])
def test_every_example_pod_parses_through_the_real_entry_points(
    path: Path, index: int, founding: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"] |= {"namespace": "ml", "uid": "u"}
    pod = build_pod(parse_job(manifest), index, founding=founding)
    trainer, sidecar = pod["spec"]["containers"]
    # the sidecar: its command and arguments through the CLI's own parser and config check
    env = _resolved_env(pod, sidecar)
    argv = [_expand(a, env) for a in sidecar["command"][1:] + sidecar["args"]]
    assert sidecar["command"][0] == "chaos-train"
    args = build_parser().parse_args(argv)
    secret = tmp_path / "join-secret"
    secret.write_text("x" * 40)
    assert args.secret_file == SECRET_FILE
    args.secret_file = str(secret)  # the mounted Secret, here
    job = parse_job(manifest)
    if job.party is not None:  # the mounted party key and policy: the pods' ids must be the party's
        assert (args.party_key, args.admission_policy) == (PARTY_KEY_FILE, POLICY_FILE)
        signer, raw = new_key_file("site-a", b"k" * 32)
        (tmp_path / "party.key").write_bytes(raw)
        parties = [{"name": "site-a", "nodes": {"prefix": f"{job.name}-"}, "max_nodes": 8,
                    "keys": [{"public_key": signer.public_key}]},
                   {"name": "site-b", "nodes": {"prefix": "b"}, "max_nodes": 2,
                    "keys": [{"public_key": new_key_file("site-b", b"b" * 32)[0].public_key}]}]  # fmt: skip
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump({"version": 1, "parties": parties}))
        args.party_key, args.admission_policy = str(tmp_path / "party.key"), str(tmp_path / "policy.yaml")
        assert args.allow_cleartext_collectives == job.party.allow_cleartext_collectives
    config = config_from_args(args)
    assert config.node_id == pod["metadata"]["name"] and config.seed == (founding and index == 0)
    assert config.defer_join is False and args.kube_job == manifest["metadata"]["name"]
    advertised = job.expose.template.replace("{pod}", pod["metadata"]["name"]).replace("{port}", "7070")
    assert args.advertise == advertised.replace("{podIP}", "10.1.2.3")
    assert (job.party is not None) == (config.secret.party is not None)
    # the trainer: chaos-train run SCRIPT, with its whole configuration in the environment
    command = trainer["command"] + (trainer.get("args") or [])
    assert command[:2] == ["chaos-train", "run"]
    run_args = build_parser().parse_args(command[1:])
    assert run_args.script == "/opt/chaos/examples/train/mlp.py"
    assert (ROOT / "examples" / "train" / "mlp.py").is_file()  # what the image copies there
    parsed = trainer_env.TrainerEnv.from_environ(_resolved_env(pod, trainer))
    assert parsed is not None and parsed.founding == founding


def test_example_images_are_the_ones_the_dockerfile_builds() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\w[\w-]*)", dockerfile, re.M))
    for path in EXAMPLES:
        for container in yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            assert image.startswith("ghcr.io/chaos-training/"), image
            target = image.rsplit("/", 1)[1].split(":")[0]
            assert target in targets, (path.name, image)


def _report(**over):
    fields = dict(job="j", pod="j-0", epoch=3, members=["j-0", "j-1"], coordinator="j-0", step=7,
                  released=False, events=[{"kind": "join", "epoch": 3}])  # fmt: skip
    return encode_report(**(fields | over))


def test_reports_round_trip_and_stay_under_the_size_limit() -> None:
    report = parse_report(_report(), job="j", pod="j-0")
    assert report["view"] == {"epoch": 3, "members": ["j-0", "j-1"], "coordinator": "j-0"}
    assert report["step"] == 7 and report["released"] is False
    many = [{"kind": "change", "epoch": i, "note": "x" * 400} for i in range(100)]
    assert len(_report(events=many).encode()) <= REPORT_MAX_BYTES


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", "report"),
        ("[1, 2]", "report"),
        (json.dumps({"job": "j", "pod": "j-0", "pad": "x" * REPORT_MAX_BYTES}), "report"),
        (_report(job="other"), "report.job"),
        (_report(pod="j-1"), "report.pod"),
        (_report(step=-1), "report.step"),
        (json.dumps({"job": "j", "pod": "j-0", "view": {"epoch": "3", "members": []}}), "report.view.epoch"),
        (json.dumps({"job": "j", "pod": "j-0", "released": "yes"}), "report.released"),
        (json.dumps({"job": "j", "pod": "j-0", "events": [{"kind": "boom", "epoch": 1}]}), "report.events"),
    ],
)
def test_bad_reports_are_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_report(text, job="j", pod="j-0")
    assert info.value.field == field
