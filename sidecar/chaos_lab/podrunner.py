"""A small kubelet for the Kubernetes API emulator: runs the pods the operator creates as real
processes on this machine, so that apply -> operator -> pods -> training -> reports -> status
runs without a cluster (``tests/e2e_local``). Needs root (network namespaces, bind mounts).

For every pod in the namespace it watches (by listing every ``POLL_S``):

- **network**: one network namespace per pod (a slot of a routed :class:`chaos_lab.netns.Star`),
  its address written to ``status.podIP``; pods reach each other through the root namespace,
  and reach the API emulator at the root end of their veth (the emulator listens on every
  interface). ``KUBERNETES_SERVICE_HOST``/``PORT`` point there, and so does
  ``CHAOS_KUBE_API`` (http: the emulator speaks no TLS), as a kubelet's would.
- **DNS**: each pod's namespace has a resolver that fails at once (``chaos_lab.netns`` gives
  every namespace one: torch looks up each connecting peer's name, and the machine's resolver
  is out of reach). A real cluster's DNS answers. Nothing here needs names: pods advertise
  their IPs.
- **containers**: each container's ``command`` + ``args`` (``$(VAR)`` expanded from its env, as
  the kubelet does) run as a process inside the pod's namespace, with the container's ``env``
  (``value`` with ``$(VAR)`` expansion, ``fieldRef`` of ``metadata.name``, ``metadata.namespace``,
  ``metadata.uid``, ``metadata.labels['k']``, ``status.podIP``, ``spec.serviceAccountName``) and
  this repository's virtual environment first on ``PATH``: the "image" is this checkout. A
  container without ``command`` fails (the runner does not know images' entrypoints).
- **volumes**: ``emptyDir``, ``secret``, ``configMap``, ``downwardAPI`` and ``hostPath`` are
  materialised under the pod's directory (or used in place, for hostPath) and bind-mounted at
  each ``volumeMount``'s path (its ``subPath`` inside the volume, created when missing, as the
  kubelet does) inside the process's own mount namespace (``ip netns exec`` gives every
  process one, so the mounts are seen by that process only). A ``persistentVolumeClaim`` is
  one directory per claim under the runner's work directory, shared by every pod that mounts
  it (ReadWriteMany) and kept when pods go; a pod whose claim does not exist in the API stays
  Pending. The service account's
  token and namespace are mounted at ``/var/run/secrets/kubernetes.io/serviceaccount``.
- **image paths**: ``IMAGE_PATHS`` maps paths the Dockerfile populates to this checkout:
  ``/opt/chaos/examples/train`` is the repository's ``examples/train`` (the trainer image's
  ``COPY examples/train /opt/chaos/examples/train``).
- **status**: ``Pending`` until the volumes are there (a missing Secret keeps a pod waiting, as
  ContainerCreating does), ``Running`` once the processes start, readiness from each
  container's ``readinessProbe`` (``httpGet`` on the pod's IP; a container without one is ready
  while it runs), and once every container has exited ``Succeeded`` (all exit 0) or ``Failed``.
  Only ``restartPolicy: Never`` is modelled; liveness probes are not run. Pod processes run
  at nice ``POD_NICE``, below the control plane in this process (a node reserves CPU for it).
- **deletion**: a pod gone from the API (or carrying a ``deletionTimestamp``) has its processes
  sent SIGTERM, then SIGKILL after the grace period (at most ``MAX_GRACE_S``).

:meth:`PodRunner.kill` kills a pod's processes (a crashed node), for the tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chaos_lab import netns

POLL_S = 0.2
PROBE_TIMEOUT_S = 1.0
MAX_PROBE_PERIOD_S = 0.5  # probes run at least this often (pods here start in seconds)
MAX_GRACE_S = 5.0
KILL_WAIT_S = 10.0
SLOW_CALL_S = 1.0
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REPO = Path(__file__).resolve().parents[2]
IMAGE_PATHS = {"/opt/chaos/examples/train": REPO / "examples" / "train"}
_VAR = re.compile(r"\$\((\w+)\)")
# the runner marks each pod object it started (the emulator sets no uid): a pod of the same name
# without this mark is a new object, and the old one's processes are stopped first
INSTANCE = "podrunner.chaos-lab/instance"
# what the garbage collector looks at: objects owned by a job that no longer exists are deleted
OWNED_KINDS = ("pods", "services", "configmaps", "secrets", "serviceaccounts")
RBAC_KINDS = ("roles", "rolebindings")
JOBS = "/apis/chaostraining.io/v1alpha1/namespaces/{ns}/chaostrainingjobs"
GC_EVERY_S = 1.0
# pods run below the control plane (the emulator, the operator, this runner), as on a node whose
# system daemons have CPU reserved: five busy trainers on two cores must not starve the probes
POD_NICE = 5
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable() -> str | None:
    """Why pods cannot run here, or None."""
    return netns.unavailable()


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (an unknown name stays as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


@dataclass
class Container:
    name: str
    process: subprocess.Popen | None = None
    exit_code: int | None = None
    ready: bool = False
    error: str | None = None
    next_probe: float = 0.0
    probe_failures: int = 0  # in a row; failureThreshold of them make the container not ready
    probe_error: str | None = None


@dataclass
class RunningPod:
    name: str
    uid: str
    slot: int
    directory: Path
    token: str = ""
    kill_at: float = 0.0
    kill_reported: bool = False
    containers: dict[str, Container] = field(default_factory=dict)
    started: bool = False
    stopping: bool = False
    last_status: dict[str, Any] | None = None
    pending_reason: str | None = None


class PodRunner:
    """Plays the kubelet for the pods of ``namespace`` on the API at ``api_url``.

    ``api_port`` is the emulator's port, reached from inside the pods at their root-side
    address; ``slots`` is how many pods may run at once."""

    def __init__(self, api_url: str, api_port: int, workdir: Path, *, namespace: str = "default",
                 slots: int = 10) -> None:  # fmt: skip
        self.api_url = api_url.rstrip("/")
        self.api_port = api_port
        self.workdir = workdir
        self.namespace = namespace
        self.slots = slots
        self.pods: dict[str, RunningPod] = {}  # by name
        self._instances = 0
        self._gc_at = 0.0
        self.star: netns.Star | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self.errors: list[str] = []  # what the runner itself failed at (shown by tests)

    # --- life -------------------------------------------------------------------------------------

    async def __aenter__(self) -> PodRunner:
        netns.remove_stale()
        self.star = netns.Star(self.slots, [None] * self.slots, subnet=200 + os.getpid() % 50, routed=True)
        await asyncio.to_thread(self.star.__enter__)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pod in list(self.pods.values()):
            self._signal(pod, signal.SIGKILL)
            for c in pod.containers.values():
                if c.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        await asyncio.to_thread(c.process.wait, 10)
        if self._session is not None:
            await self._session.close()
        if self.star is not None:
            await asyncio.to_thread(self.star.__exit__)

    def ip(self, pod_name: str) -> str | None:
        for pod in self.pods.values():
            if pod.name == pod_name and not pod.stopping:
                assert self.star is not None
                return self.star.ip(pod.slot)
        return None

    def kill(self, pod_name: str) -> None:
        """SIGKILL every process of the pod (a crashed node); its phase becomes Failed."""
        for pod in self.pods.values():
            if pod.name == pod_name and not pod.stopping:
                self._signal(pod, signal.SIGKILL)
                return
        raise KeyError(f"no running pod {pod_name}")

    def claim_path(self, claim: str) -> Path:
        """Where the persistentVolumeClaim ``claim``'s data lives (shared, outlives the pods)."""
        return self.workdir / "claims" / claim

    def log_path(self, pod_name: str, container: str) -> Path | None:
        for pod in self.pods.values():
            if pod.name == pod_name:
                return pod.directory / "logs" / f"{container}.log"
        return None

    # --- the loop ---------------------------------------------------------------------------------

    async def _api(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        began = time.monotonic()
        try:
            async with self._session.request(method, self.api_url + path, json=body, headers=headers) as r:
                if r.status == 404:
                    return None
                if r.status >= 300:
                    raise RuntimeError(f"{method} {path}: {r.status} {(await r.text())[:200]}")
                return await r.json()
        except TimeoutError:
            raise TimeoutError(f"{method} {path}: no answer in {time.monotonic() - began:.1f} s") from None
        finally:
            took = time.monotonic() - began
            if took > SLOW_CALL_S:  # a slow API shows in the test's output, with when
                when = time.strftime("%H:%M:%S")
                print(f"podrunner: {when} {method} {path} took {took:.1f} s", file=sys.stderr)

    async def _loop(self) -> None:
        while True:
            try:
                await self._sync()
            except Exception as exc:  # a runner bug must show, not stop every pod silently
                self.errors.append(f"{type(exc).__name__}: {exc}")
                print(f"podrunner: {time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}", file=sys.stderr)
            await asyncio.sleep(POLL_S)

    async def _sync(self) -> None:
        self._reap()
        listed = await self._api("GET", f"/api/v1/namespaces/{self.namespace}/pods") or {}
        seen = set()
        for body in listed.get("items") or []:
            meta = body.get("metadata") or {}
            name = meta["name"]
            token = (meta.get("annotations") or {}).get(INSTANCE)
            pod = self.pods.get(name)
            if pod is not None and (meta.get("deletionTimestamp") or (pod.started and token != pod.token)):
                self._stop(pod, body)  # deleted, or deleted and created anew between two looks
                continue
            if pod is not None and pod.stopping:
                continue  # the new object starts once the old one's processes are gone
            seen.add(name)
            if pod is None:
                slot = self._free_slot()
                if slot is None:
                    continue  # no room: stays Pending until a pod goes
                self._instances += 1
                pod = RunningPod(name, name, slot, self.workdir / f"{name}-{self._instances}")
                pod.token = f"{os.getpid()}-{self._instances}"
                self.pods[name] = pod
            if not pod.started:
                await self._start(pod, body)
            await self._update(pod, body)
        for name, pod in list(self.pods.items()):
            if name not in seen and not pod.stopping:
                self._stop(pod, None)
        if time.monotonic() - self._gc_at > GC_EVERY_S:
            self._gc_at = time.monotonic()
            await self._collect_garbage()

    async def _collect_garbage(self) -> None:
        """The garbage collector's part: delete what a deleted job owned (ownerReferences)."""
        jobs = await self._api("GET", JOBS.format(ns=self.namespace)) or {}
        alive = {(j.get("metadata") or {}).get("uid") for j in jobs.get("items") or []}
        paths = [f"/api/v1/namespaces/{self.namespace}/{kind}" for kind in OWNED_KINDS]
        paths += [f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self.namespace}/{k}" for k in RBAC_KINDS]
        for path in paths:
            for obj in (await self._api("GET", path) or {}).get("items") or []:
                owners = (obj.get("metadata") or {}).get("ownerReferences") or []
                if owners and not any(o.get("uid") in alive for o in owners):
                    await self._api("DELETE", f"{path}/{obj['metadata']['name']}")

    def _free_slot(self) -> int | None:
        used = {p.slot for p in self.pods.values()}
        return next((i for i in range(self.slots) if i not in used), None)

    # --- starting ---------------------------------------------------------------------------------

    def _fields(self, body: dict[str, Any]) -> dict[str, str]:
        assert self.star is not None
        meta = body["metadata"]
        pod = self.pods[meta["name"]]
        out = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta.get("namespace", self.namespace),
            "metadata.uid": meta.get("uid", ""),
            "status.podIP": self.star.ip(pod.slot),
            "spec.serviceAccountName": body["spec"].get("serviceAccountName", "default"),
            "spec.nodeName": "podrunner",
        }
        for key, value in (meta.get("labels") or {}).items():
            out[f"metadata.labels['{key}']"] = value
        for key, value in (meta.get("annotations") or {}).items():
            out[f"metadata.annotations['{key}']"] = value
        return out

    async def _volumes(self, pod: RunningPod, body: dict[str, Any]) -> dict[str, Path] | None:
        """Volume name -> host path; None (with ``pending_reason``) while something is missing."""
        fields = self._fields(body)
        out: dict[str, Path] = {}
        ns = body["metadata"].get("namespace", self.namespace)
        for volume in body["spec"].get("volumes") or []:
            name = volume["name"]
            path = pod.directory / "volumes" / name
            if "hostPath" in volume:
                out[name] = Path(volume["hostPath"]["path"])
                out[name].mkdir(parents=True, exist_ok=True)
                continue
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if await self._api("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}") is None:
                    pod.pending_reason = f"persistentvolumeclaim {claim} not found"
                    return None
                out[name] = self.claim_path(claim)
                out[name].mkdir(parents=True, exist_ok=True)
                continue
            path.mkdir(parents=True, exist_ok=True)
            out[name] = path
            if "emptyDir" in volume:
                continue
            if "secret" in volume or "configMap" in volume:
                kind, ref = ("secrets", volume["secret"]["secretName"]) if "secret" in volume else (
                    "configmaps", volume["configMap"]["name"])  # fmt: skip
                source = volume.get("secret") or volume.get("configMap")
                obj = await self._api("GET", f"/api/v1/namespaces/{ns}/{kind}/{ref}")
                if obj is None:
                    pod.pending_reason = f"{kind[:-1]} {ref} not found"
                    return None
                raw = (obj.get("data") or {}).items()
                if kind == "secrets":
                    data = {k: base64.b64decode(v) for k, v in raw}
                else:
                    data = {k: v.encode() for k, v in raw}
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        pod.pending_reason = f"{kind[:-1]} {ref} has no key {item['key']}"
                        return None
                    (path / item["path"]).write_bytes(data[item["key"]])
            elif "downwardAPI" in volume:
                for item in volume["downwardAPI"].get("items") or []:
                    (path / item["path"]).write_text(fields.get(item["fieldRef"]["fieldPath"], ""))
            else:
                pod.pending_reason = f"volume {name}: kind not supported by the pod runner"
                return None
        account = pod.directory / "serviceaccount"
        account.mkdir(parents=True, exist_ok=True)
        (account / "token").write_text(f"podrunner-{body['spec'].get('serviceAccountName', 'default')}")
        (account / "namespace").write_text(ns)
        out["__serviceaccount__"] = account
        return out

    def _env(self, container: dict[str, Any], fields: dict[str, str], slot: int) -> dict[str, str]:
        assert self.star is not None
        api_host = self.star.root_ip(slot)
        env = {
            "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}",
            "HOME": "/root",
            "PYTHONUNBUFFERED": "1",
            "KUBERNETES_SERVICE_HOST": api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "CHAOS_KUBE_API": f"http://{api_host}:{self.api_port}",
        }
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            elif "fieldRef" in (item.get("valueFrom") or {}):
                env[item["name"]] = fields.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
        return env

    async def _start(self, pod: RunningPod, body: dict[str, Any]) -> None:
        assert self.star is not None
        volumes = await self._volumes(pod, body)
        if volumes is None:
            return
        pod.pending_reason = None
        fields = self._fields(body)
        (pod.directory / "logs").mkdir(parents=True, exist_ok=True)
        path = f"/api/v1/namespaces/{body['metadata'].get('namespace', self.namespace)}/pods/{pod.name}"
        await self._api("PATCH", path, {"metadata": {"annotations": {INSTANCE: pod.token}}})
        for spec in body["spec"].get("containers") or []:
            container = pod.containers[spec["name"]] = Container(spec["name"])
            env = self._env(spec, fields, pod.slot)
            argv = [expand(a, env) for a in (spec.get("command") or [])] + [
                expand(a, env) for a in (spec.get("args") or [])
            ]
            if not spec.get("command"):
                container.error, container.exit_code = "no command (image entrypoints are unknown here)", 127
                continue
            mounts = [(volumes["__serviceaccount__"], SERVICE_ACCOUNT_DIR)]
            mounts += [(host, Path(image)) for image, host in IMAGE_PATHS.items()]
            for m in spec.get("volumeMounts") or []:
                source = volumes[m["name"]]
                if m.get("subPath"):
                    source = source / m["subPath"]
                    source.mkdir(parents=True, exist_ok=True)
                mounts.append((source, Path(m["mountPath"])))
            script = "set -e; " + "; ".join(
                f"mkdir -p {shlex.quote(str(target))}; mount --bind {shlex.quote(str(source))} "
                f"{shlex.quote(str(target))}"
                for source, target in mounts
            ) + f'; cd {shlex.quote(spec.get("workingDir") or "/")}; exec "$@"'  # fmt: skip
            cmd = self.star.wrap(pod.slot, ["nice", "-n", str(POD_NICE), "sh", "-c", script, "sh", *argv])
            log = (pod.directory / "logs" / f"{spec['name']}.log").open("ab")
            container.process = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()
        pod.started = True

    # --- status -----------------------------------------------------------------------------------

    async def _probe(self, pod: RunningPod, container: Container, spec: dict[str, Any]) -> None:
        assert self.star is not None and self._session is not None
        probe = spec.get("readinessProbe")
        running = container.process is not None and container.exit_code is None
        if not running:
            container.ready = False
            return
        if not probe:
            container.ready = True
            return
        now = time.monotonic()
        if now < container.next_probe:
            return
        container.next_probe = now + min(float(probe.get("periodSeconds", 10)), MAX_PROBE_PERIOD_S)
        http = probe.get("httpGet")
        if not http:
            container.ready = True  # exec/tcp probes are not modelled: ready while running
            return
        port = http["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in spec.get("ports") or [] if p.get("name") == port)
        url = f"http://{self.star.ip(pod.slot)}:{port}{http.get('path', '/')}"
        timeout = aiohttp.ClientTimeout(total=float(probe.get("timeoutSeconds", PROBE_TIMEOUT_S)))
        try:
            async with self._session.get(url, timeout=timeout) as r:
                ok = 200 <= r.status < 400
                container.probe_error = None if ok else f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok = False
            container.probe_error = f"{type(exc).__name__}: {exc}"
        # as the kubelet: ready after successThreshold (1) success, not ready after
        # failureThreshold (default 3) failures in a row
        container.probe_failures = 0 if ok else container.probe_failures + 1
        if ok:
            container.ready = True
        elif container.probe_failures >= int(probe.get("failureThreshold", 3)):
            container.ready = False

    async def _update(self, pod: RunningPod, body: dict[str, Any]) -> None:
        assert self.star is not None
        specs = {c["name"]: c for c in body["spec"].get("containers") or []}
        for container in pod.containers.values():
            if container.process is not None and container.exit_code is None:
                container.exit_code = container.process.poll()
        await asyncio.gather(*(self._probe(pod, c, specs.get(n, {})) for n, c in pod.containers.items()))
        status: dict[str, Any] = {"podIP": self.star.ip(pod.slot), "podIPs": [{"ip": self.star.ip(pod.slot)}]}
        if not pod.started:
            status["phase"] = "Pending"
            status["conditions"] = [{"type": "Ready", "status": "False", "reason": pod.pending_reason or ""}]
        else:
            codes = [c.exit_code for c in pod.containers.values()]
            if all(code is not None for code in codes):
                status["phase"] = "Succeeded" if all(code == 0 for code in codes) else "Failed"
            else:
                status["phase"] = "Running"
            statuses = []
            for c in pod.containers.values():
                reason = c.error or ("Completed" if c.exit_code == 0 else "Error")
                state: dict[str, Any] = (
                    {"running": {}}
                    if c.exit_code is None
                    else {"terminated": {"exitCode": c.exit_code, "reason": reason}}
                )
                statuses.append({"name": c.name, "ready": c.ready, "state": state, "restartCount": 0})
            status["containerStatuses"] = statuses
            ready = status["phase"] == "Running" and all(c.ready for c in pod.containers.values())
            status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        if status != pod.last_status:
            path = f"/api/v1/namespaces/{body['metadata'].get('namespace', self.namespace)}/pods/{pod.name}"
            if await self._api("PATCH", path, {"status": status}) is not None:
                pod.last_status = status

    # --- stopping ---------------------------------------------------------------------------------

    def _signal(self, pod: RunningPod, sig: int) -> None:
        for c in pod.containers.values():
            if c.process is not None and c.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.process.pid, sig)

    @staticmethod
    def _alive(pod: RunningPod) -> bool:
        return any(c.process is not None and c.process.poll() is None for c in pod.containers.values())

    def _stop(self, pod: RunningPod, body: dict[str, Any] | None) -> None:
        """SIGTERM now; SIGKILL once the grace period is over (see _reap, every loop)."""
        if pod.stopping:
            return
        pod.stopping = True
        grace = float(((body or {}).get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        pod.kill_at = time.monotonic() + min(grace, MAX_GRACE_S)
        self._signal(pod, signal.SIGTERM)

    def _reap(self) -> None:
        """Stopping pods: gone once every process exited (the slot is free again); SIGKILL
        after the grace period, again at every look until they are gone."""
        now = time.monotonic()
        for name, pod in list(self.pods.items()):
            if not pod.stopping:
                continue
            if not self._alive(pod):
                del self.pods[name]
            elif now >= pod.kill_at:
                self._signal(pod, signal.SIGKILL)
                if now >= pod.kill_at + KILL_WAIT_S and not pod.kill_reported:
                    pod.kill_reported = True
                    self.errors.append(f"{name}: processes outlived SIGKILL by {KILL_WAIT_S} s")

    def describe(self) -> str:
        """One line per pod: containers, exit codes, readiness (for failure messages)."""
        rows = []
        task = self._task
        if task is not None and task.done():
            rows.append(f"RUNNER LOOP ENDED: {task.exception() if not task.cancelled() else 'cancelled'}")
        elif task is not None:
            frames = task.get_stack(limit=8)
            rows.append("loop at " + " < ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames))
        rows += [f"errors {self.errors[-3:]}"]
        for pod in self.pods.values():
            parts = [
                f"{c.name}:{'ready' if c.ready else 'notready'}:{c.exit_code}:"
                f"{c.process.poll() if c.process else 'none'}:{c.probe_error or ''}"
                for c in pod.containers.values()
            ]
            rows.append(f"{pod.name} slot {pod.slot} {'stopping ' if pod.stopping else ''}{' '.join(parts)}")
        return "; ".join(rows)


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
