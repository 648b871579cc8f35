"""Every pod the operator builds for every example, and every workload of every chart rendering,
passes the "restricted" Pod Security Standard (checked by ``tests/podsecurity.py``, written from
the Kubernetes documentation's rule list); a template that sets something against it keeps what
it set and is reported, never silently changed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from chaos_operator.domain import builders
from chaos_operator.domain.security import harden_pod, pod_security_warnings
from chaos_operator.domain.spec import parse_job
from chart_renderings import RENDERINGS
from podsecurity import restricted_violations, workload_pods

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _job(manifest: dict):
    manifest = copy.deepcopy(manifest)
    manifest["metadata"] |= {"namespace": "ml", "uid": "0b0e4f9c-5a55-4c9e-9d0e-2d1f4d4b7a10"}
    return parse_job(manifest)


def _pods(manifest: dict) -> list[dict]:
    job = _job(manifest)
    return [builders.build_pod(job, index) for index in sorted({0, job.desired - 1})]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_pod_built_for_an_example_passes_restricted(example: Path) -> None:
    manifest = yaml.safe_load(example.read_text())
    for pod in _pods(manifest):
        assert restricted_violations(pod) == [], pod["metadata"]["name"]
        sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "chaos-sidecar")
        assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
        writable = {m["mountPath"] for m in sidecar["volumeMounts"] if not m.get("readOnly")}
        # the sidecar writes only to its volumes: snapshots and its durable membership state
        assert writable == {builders.SNAPSHOT_DIR, builders.STATE_MOUNT}
    assert pod_security_warnings(_job(manifest)) == []


def test_zero_violations_in_total_across_examples_and_chart_renderings(render_chart) -> None:
    checked, violations = 0, []
    for example in EXAMPLES:
        for pod in _pods(yaml.safe_load(example.read_text())):
            checked += 1
            violations += restricted_violations(pod)
    for values in RENDERINGS.values():
        for name, pod in workload_pods(render_chart(values)):
            checked += 1
            violations += [f"{name}: {v}" for v in restricted_violations(pod)]
    print(f"restricted Pod Security Standard: {checked} pods and pod templates, {len(violations)} violations")
    assert checked == 2 * len(EXAMPLES) + len(
        RENDERINGS
    )  # two pods per example, one Deployment per rendering
    assert violations == []


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_chart_workload_passes_restricted(render_chart, rendering: str) -> None:
    pods = workload_pods(render_chart(RENDERINGS[rendering]))
    assert [name.split("/")[0] for name, _ in pods] == ["Deployment"]  # the operator
    for name, pod in pods:
        assert restricted_violations(pod) == [], name


# --- the checker can fail: one mutation per control ----------------------------------------------


def _container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


MUTATIONS = {
    "HostProcess": lambda p: p["spec"]["securityContext"].update(windowsOptions={"hostProcess": True}),
    "Host Namespaces": lambda p: p["spec"].update(hostNetwork=True),
    "Privileged Containers": lambda p: _container(p)["securityContext"].update(privileged=True),
    "Host Ports": lambda p: (
        _container(p).setdefault("ports", []).append({"containerPort": 80, "hostPort": 80})
    ),
    "AppArmor": lambda p: _container(p)["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
    "SELinux": lambda p: p["spec"]["securityContext"].update(seLinuxOptions={"user": "system_u"}),
    "/proc Mount Type": lambda p: _container(p)["securityContext"].update(procMount="Unmasked"),
    "Sysctls": lambda p: p["spec"]["securityContext"].update(
        sysctls=[{"name": "kernel.msgmax", "value": "1"}]
    ),
    "HostPath Volumes": lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "Volume Types": lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
    "Privilege Escalation": lambda p: _container(p)["securityContext"].pop("allowPrivilegeEscalation"),
    "Running as Non-root": lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"),
    "Running as Non-root user": lambda p: _container(p)["securityContext"].update(runAsUser=0),
    "Seccomp": lambda p: p["spec"]["securityContext"].pop("seccompProfile"),
    "Capabilities": lambda p: _container(p)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
}


@pytest.mark.parametrize("control", sorted(MUTATIONS))
def test_the_checker_catches_each_control(control: str) -> None:
    pod = _pods(yaml.safe_load(EXAMPLES[0].read_text()))[0]
    assert restricted_violations(pod) == []
    MUTATIONS[control](pod)
    found = restricted_violations(pod)
    assert any(v.startswith(f"{control}:") for v in found), found


# --- merge, do not overwrite ---------------------------------------------------------------------


def _with_template(spec_changes: dict, container_sc: dict | None = None) -> dict:
    manifest = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    template = manifest["spec"]["template"]["spec"]
    template.update(spec_changes)
    if container_sc is not None:
        template["containers"][0]["securityContext"] = container_sc
    return manifest


def test_what_the_user_set_in_line_with_restricted_is_kept() -> None:
    manifest = _with_template(
        {
            "securityContext": {
                "runAsUser": 4242,
                "fsGroup": 4242,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/trainer.json"},
            }
        },
        {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}, "readOnlyRootFilesystem": False},
    )
    pod = _pods(manifest)[0]
    psc = pod["spec"]["securityContext"]
    assert psc["runAsUser"] == 4242 and psc["fsGroup"] == 4242 and "fsGroupChangePolicy" not in psc
    assert psc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/trainer.json"}
    trainer = _container(pod)["securityContext"]
    assert trainer["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert trainer["readOnlyRootFilesystem"] is False and trainer["allowPrivilegeEscalation"] is False
    assert restricted_violations(pod) == [] and pod_security_warnings(_job(manifest)) == []


@pytest.mark.parametrize(
    ("spec_changes", "container_sc", "control", "warning"),
    [
        ({"hostNetwork": True}, None, "Host Namespaces", "spec.hostNetwork"),
        ({}, {"privileged": True}, "Privileged Containers", "privileged is true"),
        ({}, {"runAsUser": 0}, "Running as Non-root user", "runAsUser is 0"),
        ({}, {"allowPrivilegeEscalation": True}, "Privilege Escalation", "allowPrivilegeEscalation"),
        ({}, {"capabilities": {"drop": ["NET_RAW"]}}, "Capabilities", "drop does not include ALL"),
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, None, "Seccomp", "seccompProfile"),
        ({"volumes": [{"name": "data", "hostPath": {"path": "/data"}}]}, None, "Volume Types", "hostPath"),
    ],
)
def test_a_user_setting_against_restricted_is_kept_and_warned(
    spec_changes, container_sc, control, warning
) -> None:
    manifest = _with_template(spec_changes, container_sc)
    pod = _pods(manifest)[0]
    found = restricted_violations(pod)
    assert any(v.startswith(f"{control}:") for v in found), found  # kept as the user set it
    warnings = pod_security_warnings(_job(manifest))
    assert any(warning in w for w in warnings), warnings
    assert not [v for v in found if "chaos-sidecar" in v]  # the injected sidecar stays restricted


def test_harden_pod_does_not_mutate_its_input() -> None:
    spec = {"containers": [{"name": "t", "securityContext": {"runAsUser": 7}}]}
    before = copy.deepcopy(spec)
    hardened, warnings = harden_pod(spec)
    assert spec == before and warnings == []
    assert hardened["containers"][0]["securityContext"]["runAsUser"] == 7
