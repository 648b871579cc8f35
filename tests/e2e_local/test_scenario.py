"""The Kubernetes path end to end, without a cluster: kmock's API emulator, the operator
in-process (Kopf), and ``chaos_lab.podrunner`` playing the kubelet (every pod's containers run
as real processes in their own network namespace). Needs root; skipped with the reason
otherwise.

One scenario, asserted step by step (status fields, the trainers' event logs):
apply the CRD and a 3-replica job with the Kubernetes client -> the operator makes pods -> they
find each other and train -> scale to 5 through the scale subresource -> the joiners pull from
several members -> scale to 3 -> the operator deletes exactly the two released pods -> kill one
pod's processes -> the group heals and the operator replaces the pod -> stop the operator, crash
a member and add a pod by hand while training goes on -> restart the operator, status catches up
-> kill every pod (every process, SIGKILL): the operator's new pods found a group that resumes
from the newest checkpoint on the job's claim (spec.checkpoint) -> delete the job and
everything it owned is gone. Replicas identical (within each life of the job), samples neither
lost nor duplicated, the steps after the checkpoint counted once. No test writes a
chaostraining.io/* annotation: the sidecars do.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kmock._internal.apps import Server
from kubernetes import client

from chaos_lab import podrunner
from chaos_lab.jobreport import check_replicas, check_samples
from chaos_operator import kube
from chaos_operator.domain import builders
from chaos_operator.domain.spec import parse_job
from chaos_sidecar.eventlog import read as read_jsonl
from polling import until

REASON = podrunner.unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"e2e_local: {REASON} (the pod runner plays the kubelet)"),
    # about 2 min on 2 cores shared with other work (load average 13-20); each step waits
    # with its own deadline, this only bounds the whole
    pytest.mark.timeout(420),
]
ROOT = Path(__file__).resolve().parents[2]
NS = "default"
GROUP, VERSION, PLURAL = "chaostraining.io", "v1alpha1", "chaostrainingjobs"
JOB = "ctj-e2e"
CLAIM = "ctj-e2e-checkpoints"
CHECKPOINT_EVERY = 20
REQUEST_LOG = 64  # requests the emulator remembers (RecentRequests)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A synchronous client call, off the event loop the emulator serves on."""
    return asyncio.to_thread(fn, *args, **kwargs)


class Operator:
    """``chaos-train operator`` as its own process, pointed at the emulator by a kubeconfig;
    stopped with SIGTERM and started again (an in-process Kopf stopped mid-watch left the
    emulator's job resource unable to take writes)."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), CHAOS_OPERATOR_METRICS_PORT="0",
                   CHAOS_OPERATOR_STATUS_INTERVAL="0.5")  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "chaos-train"), "operator", "-A", "--standalone"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 10)


class Scenario:
    def __init__(self, url: str, runner: podrunner.PodRunner, logs: Path) -> None:
        configuration = client.Configuration()
        configuration.host = url
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.url, self.runner, self.logs = url, runner, logs

    def job(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, JOB)

    def status(self) -> dict[str, Any]:
        return self.job().get("status") or {}

    def items(self, path: str) -> list[dict[str, Any]]:
        raw = self.api.call_api("GET", f"{self.url}{path}")
        raw.read()
        return json.loads(raw.data).get("items") or []

    def pods(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.items(f"/api/v1/namespaces/{NS}/pods")}

    def scale(self, replicas: int) -> None:
        """As ``kubectl scale ctj/JOB --replicas=N``: through the scale subresource."""
        body = {"spec": {"replicas": replicas}}
        self.custom.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, JOB, body)

    def create(self, obj: dict[str, Any]) -> None:
        path = kube._path(obj, NS)
        headers = {"Content-Type": "application/json"}
        self.api.call_api("POST", f"{self.url}{path}", header_params=headers, body=obj).read()

    def ready(self) -> set[str]:
        out = set()
        for name, pod in self.pods().items():
            status = pod.get("status") or {}
            if status.get("phase") == "Running" and all(
                c.get("ready") for c in status.get("containerStatuses") or [{}]
            ):
                out.add(name)
        return out

    def trainer_records(self) -> list[dict[str, Any]]:
        return read_jsonl(sorted(self.logs.glob("*.jsonl")))

    def steps_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.trainer_records():
            if r["type"] == "step":
                out[r["node"]] = max(out.get(r["node"], 0), r["step"])
        return out

    def describe(self) -> str:
        try:
            status = self.status()
        except client.ApiException as exc:
            status = {"error": exc.status}
        brief = {k: status.get(k) for k in ("phase", "members", "step", "replicas", "readyReplicas")}
        brief["view"] = status.get("view")
        pods = {n: (p.get("status") or {}).get("phase") for n, p in self.pods().items()}
        return f"status {brief}; pods {pods}; runner {self.runner.describe()}; steps {self.steps_by_node()}"

    def describe_logs(self, pod: str) -> str:
        return "\n".join(
            f"--- {pod}/{c}:\n{podrunner.tail(self.runner.log_path(pod, c), 15)}"
            for c in ("trainer", "chaos-sidecar")
        )

    async def view_is(self, members: set[str], timeout: float, after_epoch: int = 0) -> dict[str, Any]:
        """Status shows a view newer than ``after_epoch`` of exactly ``members``, all their pods
        Ready, phase Running."""

        def check() -> dict[str, Any] | None:
            status = self.status()
            view = status.get("view") or {}
            ok = (
                set(view.get("members") or []) == members
                and view.get("epoch", 0) > after_epoch
                and status.get("members") == len(members)
                and status.get("phase") == "Running"
                and members <= self.ready()
            )
            return status if ok else None

        return await until(f"a view of {sorted(members)} in status", check, timeout, self.describe)

    async def training_advances(self, nodes: set[str], by: int, timeout: float) -> None:
        before = self.steps_by_node()
        start = {n: before.get(n, 0) for n in nodes}

        def check() -> bool:
            now = self.steps_by_node()
            return all(now.get(n, 0) >= start[n] + by for n in nodes)

        await until(f"{sorted(nodes)} to train {by} more steps", check, timeout, self.describe)


@pytest.fixture
async def scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    async with kmock.KubernetesEmulator() as emulator, Server(emulator, host="0.0.0.0") as server:
        emulator.resources.load_bundled()
        emulator._requests = RecentRequests(maxlen=REQUEST_LOG)
        port = int(str(server.url).rstrip("/").rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        logs = tmp_path / "trainer-logs"
        logs.mkdir()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
        }))  # fmt: skip
        lag = asyncio.create_task(_report_loop_lag())
        async with podrunner.PodRunner(url, port, tmp_path / "pods", namespace=NS) as runner:
            scene = Scenario(url, runner, logs)
            scene.emulator = emulator  # type: ignore[attr-defined]
            scene.kubeconfig = kubeconfig  # type: ignore[attr-defined]
            scene.operator_log = tmp_path / "operator.log"  # type: ignore[attr-defined]
            yield scene
        lag.cancel()


class RecentRequests(collections.deque):
    """kmock's log of the requests it served, bounded and read newest first.

    kmock keeps every request, and finding the reaction for a request means asking each
    reaction whether it "sees" it: a scan of the whole log, oldest first, through the
    reaction's filter. Each request cost O(requests so far), so the emulator slowed down as
    the scenario went on: after two minutes calls took seconds and this event loop (the pod
    runner's too) stalled, which made the scenario slow and flaky. The request being matched is
    the newest, so reading newest first finds it at once; a reaction that does not match reads
    only the last REQUEST_LOG. No assertion here reads the log."""

    def __iter__(self) -> Iterator[Any]:
        return reversed(self)


async def _report_loop_lag(period: float = 0.1, threshold: float = 0.5) -> None:
    """The emulator and the pod runner serve on this event loop: say when it stalls."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(period)
        late = time.monotonic() - before - period
        if late > threshold:
            print(f"event loop: {time.strftime('%H:%M:%S')} stalled {late:.1f} s", file=sys.stderr)


def _crd_resource(crd: dict[str, Any]) -> dict[str, Any]:
    """What the API server serves once a CRD is established (the emulator needs telling)."""
    names = crd["spec"]["names"]
    return {
        "kind": names["kind"],
        "singular": names["singular"],
        "namespaced": crd["spec"]["scope"] == "Namespaced",
        "verbs": ["list", "watch", "get", "create", "patch", "update", "delete"],
        "shortnames": names.get("shortNames", []),
    }


def _manifest(logs: Path) -> dict[str, Any]:
    job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    job["metadata"] = {"name": JOB, "namespace": NS, "uid": "uid-e2e-local", "resourceVersion": "1"}
    job["spec"].update(replicas=3, minReplicas=1, maxReplicas=8)
    # sidecars share 2 cores with five trainers: a failure timeout of 2 s avoids false suspicion
    job["spec"]["monitor"] = {"probeIntervalSeconds": 0.2, "failureTimeoutSeconds": 2.0}
    # a killed pod, a crashed member and the three of the kill-all: within the limit
    job["spec"]["runPolicy"] = {"backoffLimit": 10}
    job["spec"]["checkpoint"] = {"claimName": CLAIM, "everySteps": CHECKPOINT_EVERY, "keep": 3}
    trainer = job["spec"]["template"]["spec"]["containers"][0]
    # runs until the job is deleted; a 35 MB state (hidden 2048): the planner splits its pull
    trainer["command"] += ["--steps", "1000000", "--hidden", "2048"]
    trainer["env"] = [
        {"name": "CHAOS_EVENT_LOG", "value": "/var/log/chaos/$(CHAOS_NODE_ID).jsonl"},
        {"name": "CHAOS_DIGEST_EVERY", "value": "5"},
        {"name": "OMP_NUM_THREADS", "value": "1"},  # five trainers share two cores
    ]
    trainer["volumeMounts"] = [{"name": "trainer-logs", "mountPath": "/var/log/chaos"}]
    job["spec"]["template"]["spec"]["volumes"] = [{"name": "trainer-logs", "hostPath": {"path": str(logs)}}]
    return job


def _printer_columns(scene: Scenario, crd: dict[str, Any]) -> dict[str, str]:
    """``kubectl get ctj`` through the emulator, with the CRD's own printer columns."""
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    spec = ",".join(f"{c['name'].upper()}:{c['jsonPath']}" for c in columns)
    out = subprocess.run(
        ["kubectl", f"--kubeconfig={scene.kubeconfig}", "-n", NS, "get", "ctj", JOB,
         "-o", f"custom-columns={spec}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    return dict(zip(header.split(), row.split(), strict=True))


async def test_the_kubernetes_path_end_to_end(scenario: Scenario) -> None:
    scene = scenario
    started = time.monotonic()
    # --- apply the CRD and a 3-replica job (the Kubernetes client, as kubectl apply would) ---------
    crd = yaml.safe_load((ROOT / "crds" / "chaostrainingjobs.yaml").read_text())
    await call(client.ApiextensionsV1Api(scene.api).create_custom_resource_definition, crd)
    scene.emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = _crd_resource(crd)  # type: ignore[attr-defined]
    operator = Operator(scene.kubeconfig, scene.operator_log)  # type: ignore[attr-defined]
    operator.start()
    try:
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": CLAIM, "namespace": NS},
                 "spec": {"accessModes": ["ReadWriteMany"],
                          "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
        await call(scene.core.create_namespaced_persistent_volume_claim, NS, claim)
        await call(
            scene.custom.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, _manifest(scene.logs)
        )
        founders = {f"{JOB}-{i}" for i in range(3)}
        # --- pods start, find each other, train and report -------------------------------------------
        status = await scene.view_is(founders, 120)
        assert status["replicas"] == 3 and status["readyReplicas"] == 3
        assert status["selector"] == f"{GROUP}/job={JOB}"
        await scene.training_advances(founders, 5, 60)
        await until("status.step", lambda: (scene.status().get("step") or 0) > 0, 30, scene.describe)
        columns = await call(_printer_columns, scene, crd)
        assert columns["PHASE"] == "Running" and columns["MEMBERS"] == "3", columns
        assert int(columns["EPOCH"]) >= 1 and int(columns["STEP"]) > 0, columns
        secret = await call(scene.core.read_namespaced_secret, f"{JOB}-join", NS)
        assert secret.metadata.owner_references[0].uid == "uid-e2e-local"
        print(f"[{time.monotonic() - started:.0f} s] 3 founders train")

        # --- scale to 5 through the scale subresource; the joiners pull from several members ---------
        await call(scene.scale, 5)
        five = founders | {f"{JOB}-3", f"{JOB}-4"}
        await scene.view_is(five, 120)

        def joiners_pulled() -> list[dict[str, Any]] | None:
            records = scene.trainer_records()
            pulls = [r for r in records if r["type"] == "pulled" and r["node"] in five - founders]
            return pulls if {r["node"] for r in pulls} == five - founders else None

        pulls = await until("both joiners to pull the state", joiners_pulled, 120, scene.describe)
        # the state came from several members: the planner splits a pull by its link estimates,
        # so under load one joiner may take all of it from the member it rates fastest
        sending = [{s for s, b in r["per_source"].items() if b > 0} for r in pulls]
        assert len(set().union(*sending)) >= 2 and max(map(len, sending)) >= 2, pulls
        assert all(sum(r["per_source"].values()) == r["bytes"] for r in pulls), pulls
        await scene.training_advances(five, 3, 60)
        print(f"[{time.monotonic() - started:.0f} s] scaled out to 5")

        # --- scale to 3: the group chooses who leaves, the operator deletes exactly those -------------
        before = set(await call(scene.pods))
        await call(scene.scale, 3)
        released: set[str] = set()

        def watch_releases() -> set[str] | None:
            pods = scene.pods()
            for name, pod in pods.items():
                raw = ((pod["metadata"].get("annotations") or {}).get(builders.REPORT_ANNOTATION)) or "{}"
                if json.loads(raw).get("released"):
                    released.add(name)
            return set(pods) if len(pods) == 3 else None

        remaining = await until("scale-in to 3 pods", watch_releases, 120, scene.describe)
        # two pods deleted, both released: the operator deletes a pod only when its sidecar
        # reported it released or it failed, and none failed. A "released" report this poll saw,
        # or a trainer's "left", names one of them. Neither is required of each: the operator
        # may delete a released pod before this poll sees its annotation, and a trainer busy
        # in a rendezvous when its sidecar leaves may be stopped with its pod before it asks
        # its sidecar again (it logs sidecar_lost instead)
        deleted = before - remaining
        left = {r["node"] for r in scene.trainer_records() if r["type"] == "left" and r["node"] in before}
        assert len(deleted) == 2 and released | left <= deleted, (before, remaining, released, left)
        status = await scene.view_is(remaining, 60)
        assert (status.get("scaleIn") or {}).get("requested") == 0 and not status.get("failures"), status
        await scene.training_advances(remaining, 3, 60)
        print(f"[{time.monotonic() - started:.0f} s] scaled in to 3: {sorted(released)} left")

        # --- kill one pod's processes: the group heals, the operator replaces the pod -----------------
        victim = sorted(remaining - {status["view"]["coordinator"]})[0]
        epoch_before = status["view"]["epoch"]
        killed_at = time.time()
        scene.runner.kill(victim)

        def healed() -> bool:  # a view without the victim, formed by the trainers after the kill
            return any(
                r["type"] == "regroup" and r["t"] > killed_at and victim not in r["members"]
                for r in scene.trainer_records()
            )

        await until(f"the group to heal without {victim}", healed, 60, scene.describe)
        # the replacement joined (the operator names it: the lowest index free when it looked)
        survivors = remaining - {victim}

        def replaced() -> set[str] | None:
            status = scene.status()
            view = status.get("view") or {}
            members = set(view.get("members") or [])
            ok = (
                view.get("epoch", 0) > epoch_before + 1
                and len(members) == 3
                and survivors < members
                and members == set(scene.pods())
            )
            return members if ok else None

        remaining = await until(f"a replacement for {victim} in the view", replaced, 120, scene.describe)
        status = await scene.view_is(remaining, 60, after_epoch=epoch_before + 1)
        assert status["failures"] >= 1
        await scene.training_advances(remaining, 3, 60)
        print(f"[{time.monotonic() - started:.0f} s] {victim} killed, healed and replaced")

        # --- operator down: crash a member and add a pod by hand, training goes on --------------------
        await operator.stop()
        frozen = await call(scene.status)
        crashed = sorted(remaining - {status["view"]["coordinator"]})[-1]
        scene.runner.kill(crashed)
        job = parse_job(await call(scene.job))
        extra = 7
        for obj in (
            builders.build_service_account(job, extra),
            builders.build_pod_role(job, extra),
            builders.build_role_binding(job, extra),
            builders.build_pod(job, extra, founding=False),
        ):
            await call(scene.create, obj)
        added = f"{JOB}-{extra}"
        now_members = (remaining - {crashed}) | {added}

        def joined() -> bool:
            return any(
                r["type"] == "regroup" and set(r["members"]) == now_members for r in scene.trainer_records()
            )

        await until(f"{added} to join while the operator is down", joined, 120, scene.describe)
        await scene.training_advances(now_members, 3, 60)
        assert await call(scene.status) == frozen  # nobody updates status meanwhile
        print(f"[{time.monotonic() - started:.0f} s] operator down: {crashed} crashed, {added} joined")

        # --- restart the operator: status catches up ----------------------------------------------------
        operator.start()
        status = await scene.view_is(now_members, 60)
        pods = set(await call(scene.pods))
        assert crashed not in pods and pods == now_members  # the failed pod cleaned up
        assert status["step"] > (frozen.get("step") or 0)
        assert status["view"]["epoch"] > frozen["view"]["epoch"]
        assert status["lastEvents"] and any(e["kind"] == "join" for e in status["lastEvents"])
        columns = await call(_printer_columns, scene, crd)
        assert columns["MEMBERS"] == "3" and int(columns["STEP"]) >= status["step"], columns
        print(f"[{time.monotonic() - started:.0f} s] operator back, status caught up")

        # --- kill every pod (every process, SIGKILL): the job resumes from its newest checkpoint -----
        checkpoints = scene.runner.claim_path(CLAIM) / JOB  # spec.checkpoint.subPath: the job's name
        written = lambda: any(checkpoints.glob("step-*"))  # noqa: E731
        await until(f"a checkpoint in {checkpoints}", written, 60, scene.describe)
        killed_all_at = time.time()
        for pod in sorted(now_members):
            scene.runner.kill(pod)
        # the newest complete checkpoint when every process died (none is written until the
        # new group has trained CHECKPOINT_EVERY steps)
        newest = max(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*"))

        def restarted() -> set[str] | None:
            records = [r for r in scene.trainer_records() if r["t"] > killed_all_at]
            training = {r["node"] for r in records if r["type"] == "step"}
            return training if len(training) == 3 else None

        after_all = await until("three new pods to train", restarted, 120, scene.describe)
        # the first new pod founds the group from the newest checkpoint; pods that start later
        # may join that group and pull its state instead (each is one or the other)
        records = await call(scene.trainer_records)
        resumes = {
            r["node"]: r["checkpoint"] for r in records if r["type"] == "resumed" and r["t"] > killed_all_at
        }
        assert resumes and set(resumes.values()) == {newest}, (resumes, newest)
        pulled = {r["node"] for r in records if r["type"] == "pulled" and r["t"] > killed_all_at}
        assert after_all <= set(resumes) | pulled, (after_all, resumes, pulled)
        killed_at_step = max(r["step"] for r in records if r["type"] == "step"
                             and r["t"] < killed_all_at)  # fmt: skip
        assert newest <= killed_at_step < newest + 2 * CHECKPOINT_EVERY + 50, (newest, killed_at_step)
        status = await scene.view_is(after_all, 90)
        await scene.training_advances(after_all, 10, 60)  # two replica digests (every 5 steps) at least
        # the loss curve continues: the first step after the resume is the one after the
        # checkpoint, on the state the killed group had there (same batch: same loss)
        records = await call(scene.trainer_records)
        before = {r["step"]: r for r in records if r["type"] == "step" and r["t"] < killed_all_at}
        later = [r for r in records if r["type"] == "step" and r["t"] > killed_all_at]
        after = min(later, key=lambda r: r["t"])
        assert after["step"] == newest + 1, after
        if newest + 1 in before:
            assert abs(after["loss"] - before[newest + 1]["loss"]) < 1e-3, (after, before[newest + 1])
        print(f"[{time.monotonic() - started:.0f} s] every pod killed at step {killed_at_step}, "
              f"resumed from step {newest}")  # fmt: skip

        # --- delete the job: everything it owned goes ----------------------------------------------------
        await call(scene.custom.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, JOB)

        left: list[str] = []

        def all_gone() -> bool:
            left[:] = [f"pod {name}" for name in scene.pods()] + [
                f"process of {n}" for n in scene.runner.pods
            ]
            jobs = scene.items(f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}")
            left.extend(f"job {j['metadata']}" for j in jobs)
            for kind in ("services", "configmaps", "secrets", "serviceaccounts"):
                items = scene.items(f"/api/v1/namespaces/{NS}/{kind}")
                left.extend(
                    f"{kind} {o['metadata']['name']}" for o in items if o["metadata"].get("ownerReferences")
                )
            for kind in ("roles", "rolebindings"):
                items = scene.items(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/{kind}")
                left.extend(f"{kind} {o['metadata']['name']}" for o in items)
            return not left

        await until(
            "every owned object and process gone",
            all_gone,
            90,
            lambda: f"left: {left}; {scene.runner.describe()}",
        )
        print(f"[{time.monotonic() - started:.0f} s] job deleted, everything it owned gone")
    finally:
        await operator.stop()

    # --- the trainers' logs: replicas identical, samples neither lost nor duplicated --------------------
    records = await call(scene.trainer_records)
    # replicas identical within each life of the job (the steps redone after the resume may
    # sum the members' gradients in another order than the killed group did)
    lives = ([r for r in records if r["t"] < killed_all_at], [r for r in records if r["t"] > killed_all_at])
    for life in lives:
        identical, compared, problems = check_replicas(life)
        assert identical and compared >= 2, problems
    last = max(r["step"] for r in records if r["type"] == "step")
    samples = check_samples(records, last)
    assert samples["samples_lost"] == 0 and samples["samples_duplicated"] == 0, samples
    assert samples["samples_seen"] == samples["samples_expected"], samples
    # the steps after the checkpoint were taken twice (and counted once)
    batch = next(r for r in records if r["type"] == "job")["global_batch"]
    assert samples["samples_redone"] >= (killed_at_step - newest) * batch, samples
    print(f"[{time.monotonic() - started:.0f} s] done: {last} steps, {compared} digests compared, {samples}")
