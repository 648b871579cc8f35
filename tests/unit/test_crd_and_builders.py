"""The CRD's schema with a real JSON-schema validator plus its CEL rules, and the pure builders."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from chaos_operator.domain.builders import (
    INDEX_LABEL,
    JOB_LABEL,
    build_configmap,
    build_pod,
    build_pod_role,
    build_role_binding,
    build_service,
    build_service_account,
)
from chaos_operator.domain.spec import SpecError, parse_job

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "chaostrainingjobs.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _defaulted(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, as the API server does before validation."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = _defaulted(sub, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [_defaulted(schema["items"], v) for v in value]
    return value


def _strip_k8s(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_k8s(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_strip_k8s(v) for v in schema]
    return schema


def _cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(f"{path or '.'}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def admit(manifest: dict[str, Any]) -> list[str]:
    """What the API server would say: schema errors, then CEL rule failures."""
    obj = _defaulted(SCHEMA, manifest)
    validator = jsonschema.Draft7Validator(_strip_k8s(SCHEMA))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    return errors or _cel_errors(SCHEMA, obj)


def test_crd_shape() -> None:
    assert CRD["spec"]["group"] == "chaostraining.io"
    assert CRD["spec"]["names"]["shortNames"] == ["ctj"]
    version = CRD["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Members", "Epoch", "Step", "Age"} <= columns


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_admitted(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert admit(manifest) == []
    parse_job(_defaulted(SCHEMA, manifest) | {"metadata": manifest["metadata"]})


def _minimal(name: str = "mnist-minimal", **spec: Any) -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"].update(spec)
    return manifest


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (_minimal(replicas=10), "minReplicas <= replicas <= maxReplicas"),
        (_minimal(replicas=1), "minReplicas <= replicas <= maxReplicas"),
        (_minimal(replicas=0), "replicas"),
        (_minimal(replicas="3"), "replicas"),
        (_minimal(join="sometimes"), "join"),
        (_minimal(monitor={"probeIntervalSeconds": 5, "failureTimeoutSeconds": 1}), "probeIntervalSeconds"),
        (_minimal(federation={"peers": ["not a url"]}), "peers"),
        (_minimal(federation={"peers": ["https://a.example:7070"]}), "peers"),  # no id=
        (_minimal(federation={"joinSecretRef": {}}), "name"),
        (_minimal(runPolicy={"backoffLimit": -1}), "backoffLimit"),
        (_minimal(name="j" * 59), "metadata.name"),  # its pods' hostnames would not fit 63
        (_minimal(name="9lives"), "metadata.name"),  # the Service needs a DNS-1035 label
        (_minimal(name="a.b"), "metadata.name"),
        (_minimal(checkpoint={"everySteps": 10}), "claimName"),
        (_minimal(checkpoint={"claimName": "Not_A_Name"}), "claimName"),
        (_minimal(checkpoint={"claimName": "ckpt", "subPath": "../other-job"}), "subPath"),
        (_minimal(checkpoint={"claimName": "ckpt", "subPath": "/abs"}), "subPath"),
        (_minimal(checkpoint={"claimName": "ckpt", "everySteps": 0}), "everySteps"),
        (_minimal(checkpoint={"claimName": "ckpt", "keep": 0}), "keep"),
        (
            {"apiVersion": "chaostraining.io/v1alpha1", "kind": "ChaosTrainingJob", "spec": {"replicas": 3}},
            "template",
        ),
    ],
)
def test_bad_manifests_are_rejected(manifest: dict[str, Any], expected: str) -> None:
    errors = admit(manifest)
    assert errors, "should be rejected"
    assert any(expected in e for e in errors), errors


def _job(**spec: Any):
    body = _defaulted(SCHEMA, _minimal(**spec))
    body["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    return parse_job(body)


def test_spec_parser_guards_and_clamps() -> None:
    job = _job(replicas=5, minReplicas=2, maxReplicas=4)  # the CRD would refuse; the operator clamps
    assert job.desired == 4
    with pytest.raises(SpecError, match="template"):
        parse_job({"metadata": {"name": "x"}, "spec": {"template": {}}})


def test_service_is_headless_and_publishes_not_ready() -> None:
    svc = build_service(_job())
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {JOB_LABEL: "mnist-minimal"}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_pod_gets_sidecar_volume_env_and_probes() -> None:
    pod = build_pod(_job(federation={"peers": ["partner-0=https://a.example:7070"]}), 2)
    spec = pod["spec"]
    assert pod["metadata"]["name"] == "mnist-minimal-2"
    assert pod["metadata"]["labels"][INDEX_LABEL] == "2"
    names = [c["name"] for c in spec["containers"]]
    assert names == ["trainer", "chaos-sidecar"]
    sidecar = spec["containers"][1]
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--secret-file" in sidecar["args"]
    assert sidecar["args"][sidecar["args"].index("--peers") + 1] == "partner-0=https://a.example:7070"
    assert "--seed" not in sidecar["args"] and "--kube-job" in sidecar["args"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["chaos-snapshots"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["chaos-secret"]["secret"]["secretName"] == "mnist-minimal-join"
    trainer = spec["containers"][0]
    assert any(m["name"] == "chaos-snapshots" for m in trainer["volumeMounts"])
    assert spec["serviceAccountName"] == "mnist-minimal-2"


def test_the_longest_admitted_name_gives_pods_valid_hostnames() -> None:
    longest = _minimal(name="j" * 58, replicas=1024, minReplicas=1, maxReplicas=1024)
    assert admit(longest) == []
    body = _defaulted(SCHEMA, longest)
    body["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    pod = build_pod(parse_job(body), 9999)  # indices stay below the pod count, at most 1024 live
    assert len(pod["spec"]["hostname"]) == 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", pod["spec"]["hostname"])


def test_builders_do_not_mutate_the_template() -> None:
    job = _job()
    before = copy.deepcopy(job.template)
    build_pod(job, 0)
    build_pod(job, 1)
    assert job.template == before


def _allowed(rules: list[dict[str, Any]], verb: str, group: str, resource: str, name: str | None) -> bool:
    """Kubernetes RBAC for one request: some rule matches group, resource and verb, and names
    the object if it lists names (a rule with resourceNames never allows list, watch, create)."""
    for rule in rules:
        if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if not names or (name is not None and name in names):
            return True
    return False


def _permissions(objects: list[dict[str, Any]], namespace: str, account: str) -> list[dict[str, Any]]:
    """The rules a service account holds through the Roles and RoleBindings among ``objects``."""
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    rules: list[dict[str, Any]] = []
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
        if subject in binding["subjects"] and binding["roleRef"]["name"] in roles:
            rules += roles[binding["roleRef"]["name"]]["rules"]
    return rules


def test_rbac_lets_a_sidecar_read_pods_and_patch_only_its_own() -> None:
    job = _job()
    size = 4
    objects = [
        o
        for i in range(size)
        for o in (
            build_service_account(job, i),
            build_pod_role(job, i),
            build_role_binding(job, i),
            build_pod(job, i),
        )
    ]
    pods = [o for o in objects if o["kind"] == "Pod"]
    for pod in pods:
        me = pod["metadata"]["name"]
        account = pod["spec"]["serviceAccountName"]
        assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account for o in objects)
        rules = _permissions(objects, job.namespace, account)
        for other in pods:
            name = other["metadata"]["name"]
            assert _allowed(rules, "get", "", "pods", name)  # reads its job's pods
            assert _allowed(rules, "patch", "", "pods", name) == (name == me), (me, name)
        assert _allowed(rules, "list", "", "pods", None) and _allowed(rules, "watch", "", "pods", None)
        denied = [
            ("update", "", "pods", me),
            ("delete", "", "pods", me),
            ("create", "", "pods", None),
            ("patch", "", "pods", None),
            ("get", "", "secrets", f"{job.name}-join"),
            ("list", "", "secrets", None),
            ("get", "", "configmaps", "another-config"),
            ("list", "", "configmaps", None),
            ("patch", "chaostraining.io", "chaostrainingjobs", job.name),
            ("create", "rbac.authorization.k8s.io", "rolebindings", None),
            ("get", "", "pods/exec", me),
            ("create", "", "pods/eviction", me),
        ]
        for request in denied:
            assert not _allowed(rules, *request), (me, request)


def test_rbac_evaluator_can_fail() -> None:
    """The check above would catch the old shared identity: one account bound to every pod's Role."""
    job = _job()
    objects = [build_pod_role(job, i) for i in range(2)]
    shared = {"kind": "ServiceAccount", "name": "shared", "namespace": job.namespace}
    objects += [dict(build_role_binding(job, i), subjects=[shared]) for i in range(2)]
    rules = _permissions(objects, job.namespace, "shared")
    assert _allowed(rules, "patch", "", "pods", "mnist-minimal-1")  # pod 0's sidecar could patch pod 1


def test_configmap_carries_the_job_config() -> None:
    import json

    data = json.loads(build_configmap(_job(join="overlap"))["data"]["job.json"])
    assert data["join"] == "overlap" and data["failureTimeoutSeconds"] == 1.0


# --- reconcile decisions ---------------------------------------------------------------------


def _pod(index: int, phase: str = "Running", released: bool = False) -> dict:
    from chaos_operator.domain.builders import REPORT_ANNOTATION

    name = f"mnist-minimal-{index}"
    report = {"job": "mnist-minimal", "pod": name, "released": True}
    annotations = {REPORT_ANNOTATION: json.dumps(report)} if released else {}
    return {
        "metadata": {
            "name": name,
            "labels": {INDEX_LABEL: str(index), JOB_LABEL: "mnist-minimal"},
            "annotations": annotations,
        },
        "status": {"phase": phase},
    }


def test_plan_scales_out_to_the_clamped_size_and_in_only_for_released_pods() -> None:
    from chaos_operator.domain.reconcile import plan_pods

    job = _job(replicas=4, minReplicas=1, maxReplicas=8)
    assert plan_pods(job, [_pod(0), _pod(2)]).create == [1, 3]
    smaller = _job(replicas=2, minReplicas=1, maxReplicas=8)
    plan = plan_pods(smaller, [_pod(i) for i in range(4)])
    assert plan.delete == [] and plan.waiting_for_release == 2
    plan = plan_pods(smaller, [_pod(0, released=True), _pod(1), _pod(2), _pod(3, released=True)])
    assert plan.delete == ["mnist-minimal-0", "mnist-minimal-3"] and plan.create == []


def test_failed_pods_are_replaced_with_backoff_until_the_limit() -> None:
    from chaos_operator.domain.reconcile import backoff_s, plan_pods

    job = _job(replicas=2, minReplicas=1, maxReplicas=8, runPolicy={"backoffLimit": 2})
    plan = plan_pods(job, [_pod(0), _pod(1, phase="Failed")], now=100.0)
    assert plan.delete == ["mnist-minimal-1"] and plan.create == [] and plan.retry_after_s == backoff_s(1)
    later = plan_pods(job, [_pod(0)], failures=1, last_failure_at=100.0, now=100.0 + backoff_s(1))
    assert later.create == [1]
    done = plan_pods(job, [_pod(0), _pod(1, phase="Failed")], failures=2, now=200.0)
    assert done.exhausted and done.create == []
    assert [backoff_s(n) for n in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 60.0]


def test_a_released_pod_whose_processes_failed_is_no_failure() -> None:
    from chaos_operator.domain.reconcile import plan_pods

    job = _job(replicas=2, minReplicas=1, maxReplicas=8)
    plan = plan_pods(job, [_pod(0), _pod(1), _pod(2, phase="Failed", released=True)], now=5.0)
    assert plan.delete == ["mnist-minimal-2"] and plan.failures == 0 and plan.failed == []


def test_the_trainer_gets_its_configuration_from_the_injected_environment() -> None:
    from chaos_sidecar import trainer_env

    founding = build_pod(_job(join="overlap"), 0, founding=True)
    later = build_pod(_job(), 4)
    for pod, expect_founding, mode in ((founding, "1", "overlap"), (later, "0", "blocking")):
        trainer = pod["spec"]["containers"][0]
        env = {e["name"]: e for e in trainer["env"]}
        assert env[trainer_env.NODE_ID]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        values = {name: e.get("value") for name, e in env.items()}
        values[trainer_env.NODE_ID] = pod["metadata"]["name"]  # what the kubelet resolves
        parsed = trainer_env.TrainerEnv.from_environ(values)
        assert parsed is not None and parsed.node_id == pod["metadata"]["name"]
        assert values[trainer_env.FOUNDING] == expect_founding and parsed.join_mode == mode
    sidecar = founding["spec"]["containers"][1]
    assert "--seed" in sidecar["args"] and "--defer-join" not in sidecar["args"]


def test_the_join_secret_is_random_per_job_and_owned() -> None:
    import base64

    from chaos_operator.domain.builders import build_join_secret

    secret = build_join_secret(_job(), "s" * 43)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "mnist-minimal-join"
    assert base64.b64decode(secret["data"]["join-secret"]) == b"s" * 43
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_bad_reports_are_ignored_and_named() -> None:
    from chaos_operator.domain.builders import REPORT_ANNOTATION
    from chaos_operator.domain.reconcile import bad_reports, build_status

    good = _pod(0)
    view = {"epoch": 4, "members": ["mnist-minimal-0"], "coordinator": None}
    report = {"job": "mnist-minimal", "pod": "mnist-minimal-0", "step": 7, "view": view}
    good["metadata"]["annotations"] = {REPORT_ANNOTATION: json.dumps(report)}
    not_json, other_job, huge = _pod(1), _pod(2), _pod(3)
    not_json["metadata"]["annotations"] = {REPORT_ANNOTATION: "{oops"}
    other_job["metadata"]["annotations"] = {
        REPORT_ANNOTATION: json.dumps({"job": "someone-else", "pod": "mnist-minimal-2", "step": 99,
                                       "view": {"epoch": 99, "members": ["x"], "coordinator": "x"}})
    }  # fmt: skip
    huge["metadata"]["annotations"] = {REPORT_ANNOTATION: json.dumps({"pad": "x" * 10000})}
    pods = [good, not_json, other_job, huge]
    problems = bad_reports(pods)
    assert set(problems) == {"mnist-minimal-1", "mnist-minimal-2", "mnist-minimal-3"}
    assert "report.job" in problems["mnist-minimal-2"] and "not JSON" in problems["mnist-minimal-1"]
    status = build_status(_job(), pods)
    assert status["step"] == 7 and status["view"]["epoch"] == 4 and status["members"] == 1


@pytest.mark.parametrize(
    ("checkpoint", "field"),
    [
        ("ckpt", "checkpoint"),
        ({"everySteps": 10}, "checkpoint.claimName"),
        ({"claimName": "Not_A_Name"}, "checkpoint.claimName"),
        ({"claimName": "ckpt", "subPath": "a/../b"}, "checkpoint.subPath"),
        ({"claimName": "ckpt", "subPath": "/abs"}, "checkpoint.subPath"),
        ({"claimName": "ckpt", "everySteps": 0}, "checkpoint.everySteps"),
        ({"claimName": "ckpt", "everySteps": "10"}, "checkpoint.everySteps"),
        ({"claimName": "ckpt", "keep": 0}, "checkpoint.keep"),
        ({"claimName": "ckpt", "volume": {}}, "checkpoint.volume"),
    ],
)
def test_the_parser_refuses_a_bad_checkpoint_naming_the_field(checkpoint: Any, field: str) -> None:
    assert_refused(field, checkpoint=checkpoint)


def assert_refused(field: str, **spec: Any) -> None:
    """The parser refuses the minimal job with ``spec`` merged in, naming ``field``."""
    body = _minimal(**spec)
    body["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    with pytest.raises(SpecError, match=rf"^spec\.{re.escape(field)}:") as caught:
        parse_job(body)
    assert caught.value.field == field


def test_checkpoints_are_mounted_in_the_trainer_and_configured_by_its_environment() -> None:
    from chaos_sidecar import trainer_env
    from chaos_sidecar.pod_contract import CHECKPOINT_MOUNT

    job = _job(checkpoint={"claimName": "ckpt", "everySteps": 20, "keep": 2})
    assert job.checkpoint is not None and job.checkpoint.sub_path == "mnist-minimal"  # the job's name
    pod = build_pod(job, 1)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["chaos-checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    trainer, sidecar = pod["spec"]["containers"]
    mount = next(m for m in trainer["volumeMounts"] if m["name"] == "chaos-checkpoints")
    assert mount == {"name": "chaos-checkpoints", "mountPath": CHECKPOINT_MOUNT, "subPath": "mnist-minimal"}
    assert all(m["name"] != "chaos-checkpoints" for m in sidecar["volumeMounts"])  # the trainer's only
    values = {e["name"]: e.get("value") for e in trainer["env"]} | {trainer_env.NODE_ID: "mnist-minimal-1"}
    parsed = trainer_env.TrainerEnv.from_environ(values)
    assert parsed is not None and str(parsed.checkpoint_dir) == CHECKPOINT_MOUNT
    assert (parsed.checkpoint_every, parsed.checkpoint_keep) == (20, 2)
    other = build_pod(_job(checkpoint={"claimName": "ckpt", "subPath": "runs/old-job"}), 0)
    assert other["spec"]["containers"][0]["volumeMounts"][-1]["subPath"] == "runs/old-job"
    plain = build_pod(_job(), 1)  # no spec.checkpoint: no volume, no variables
    assert "chaos-checkpoints" not in {v["name"] for v in plain["spec"]["volumes"]}
    assert trainer_env.CHECKPOINT_DIR not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}


def test_the_sidecar_keeps_its_membership_state_on_a_pod_volume() -> None:
    from chaos_sidecar.pod_contract import STATE_MOUNT

    pod = build_pod(_job(), 0)
    sidecar = pod["spec"]["containers"][1]
    assert sidecar["args"][sidecar["args"].index("--state-dir") + 1] == STATE_MOUNT
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == STATE_MOUNT)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    # on the node's disk: it outlives a restarted container (not the pod); the trainer has no use for it
    assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory"
    assert all(m["name"] != mount["name"] for m in pod["spec"]["containers"][0]["volumeMounts"])


def test_pods_created_when_every_member_is_gone_found_a_new_group() -> None:
    from chaos_operator.domain.reconcile import plan_pods

    job = _job(replicas=3, minReplicas=1, maxReplicas=8)
    first = plan_pods(job, [], view_reported=False)
    assert first.founding and first.create == [0, 1, 2] and first.seed == 0
    # a view was reported and members are alive: a replacement joins them
    join = plan_pods(job, [_pod(0), _pod(2)], view_reported=True)
    assert not join.founding and join.create == [1] and join.seed is None
    # every pod failed: deleted now, replaced after the backoff, as a new founding group
    dead = plan_pods(job, [_pod(i, phase="Failed") for i in range(3)], view_reported=True, now=10.0)
    assert dead.create == [] and dead.retry_after_s > 0
    later = plan_pods(job, [], failures=3, last_failure_at=10.0, now=10.0 + dead.retry_after_s,
                      view_reported=True)  # fmt: skip
    assert later.founding and later.create == [0, 1, 2] and later.seed == 0
    # a pod still pending counts as alive: the others join it, nobody founds
    pending = plan_pods(job, [_pod(1, phase="Pending")], view_reported=True)
    assert not pending.founding and pending.create == [0, 2]


def test_a_party_whose_pods_are_all_gone_rejoins_the_other_parties_instead_of_founding() -> None:
    from chaos_operator.domain.reconcile import outside_members, plan_pods

    peers = ["b-0=https://b0.example.org:7070"]
    job = _job(replicas=2, minReplicas=1, maxReplicas=4, federation={"peers": peers})
    view = {"epoch": 9, "members": ["mnist-minimal-0", "mnist-minimal-1", "b-0", "b-1"], "coordinator": "b-0"}
    outside = outside_members(job, view)
    assert outside == ["b-0", "b-1"]
    rejoin = plan_pods(job, [], view_reported=True, outside=outside)
    assert not rejoin.founding and rejoin.seed is None and rejoin.create == [0, 1]
    assert rejoin.rejoin_through_peers == ["b-0", "b-1"]
    # the last view was this party's alone, or nobody says where the others are: found again
    assert plan_pods(job, [], view_reported=True, outside=[]).founding
    alone = _job(replicas=2, minReplicas=1, maxReplicas=4)
    assert plan_pods(alone, [], view_reported=True, outside=outside_members(alone, view)).founding
    # a pod of the job still alive: the new ones join it as always
    assert not plan_pods(job, [_pod(1)], view_reported=True, outside=outside).rejoin_through_peers
    assert outside_members(job, None) == [] and outside_members(job, {"members": ["mnist-minimal-12"]}) == []
    lookalikes = ["mnist-minimal-", "mnist-minimal-1a", "mnist-minimal-x-1", "mnist-minimal-\u0663"]
    assert outside_members(job, {"members": lookalikes}) == sorted(lookalikes)
