"""The sidecar's side of Kubernetes (``chaos-train sidecar --kube-job JOB``).

With the pod's own service account, read-only except for its own pod:

- **discovery**: list the job's pods (label ``chaostraining.io/job``) and take those with an IP
  as contacts to ask for admission. Discovery is not decision: whom the group admits, the
  sidecars agree among themselves.
- **reports**: patch this pod's ``chaostraining.io/report`` annotation (view, step, recent
  view changes, ``released``), at most once per ``min_interval_s``, with a doubling backoff
  when the API fails (403, 5xx, timeouts): training never waits for the API.
- **scale-in**: read the size the owner asked for (the job's ConfigMap, ``replicas``). When the
  agreed view has more members, the last ones in the view's order leave: every member computes
  the same choice from the same committed view, so the group decides without a vote of its
  own. A leaver leaves gracefully and its final report says ``released``; the operator
  deletes exactly the released pods.

Talks to the API with aiohttp: ``$CHAOS_KUBE_API`` if set (a test's emulator), else the
in-cluster service (``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, the service
account's token and CA, re-read on every call since tokens rotate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from chaos_sidecar.errors import InputError
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.pod_contract import (
    CONFIG_KEY,
    JOB_LABEL,
    KUBE_API,
    PEER_PORT,
    POD_NAMESPACE,
    REPORT_ANNOTATION,
    SERVICE_ACCOUNT_DIR,
    encode_report,
)

DISCOVERY_RETRY_S = (0.2, 5.0)  # first and longest pause between listings while no peer shows
API_TIMEOUT_S = 5.0
BACKOFF_S = (1.0, 30.0)  # after a failed report: first and longest pause


def log(message: str) -> None:
    print(f"chaos-sidecar: {message}", file=sys.stderr, flush=True)


class ApiFailed(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class PodApi:
    """The few calls a sidecar makes, as its pod's service account."""

    def __init__(self, base: str, namespace: str, token_file: Path | None, ca_file: Path | None) -> None:
        self.base = base.rstrip("/")
        self.namespace = namespace
        self.token_file = token_file
        self.tls: ssl.SSLContext | bool = True
        if base.startswith("https://") and ca_file is not None and ca_file.exists():
            self.tls = ssl.create_default_context(cafile=str(ca_file))
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> PodApi:
        env = dict(os.environ if environ is None else environ)
        account = Path(SERVICE_ACCOUNT_DIR)
        namespace = env.get(POD_NAMESPACE, "").strip()
        if not namespace and (account / "namespace").exists():
            namespace = (account / "namespace").read_text().strip()
        if not namespace:
            raise InputError(POD_NAMESPACE, "unset, and no service account namespace file to read it from")
        base = env.get(KUBE_API, "").strip()
        if not base:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise InputError("KUBERNETES_SERVICE_HOST", f"unset and no {KUBE_API}: not in a pod?")
            base = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
        if not base.startswith(("http://", "https://")):
            raise InputError(KUBE_API, f"expected http(s)://HOST:PORT, got {base!r}")
        token = account / "token"
        return cls(base, namespace, token if token.exists() else None, account / "ca.crt")

    async def _request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S))
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            with contextlib.suppress(OSError):
                headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body)
        try:
            async with self._session.request(
                method, self.base + path, data=data, headers=headers, ssl=self.tls
            ) as response:
                text = await response.text()
                if not 200 <= response.status <= 299:
                    raise ApiFailed(response.status, f"{method} {path}: {response.status} {text[:200]}")
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ApiFailed(None, f"{method} {path}: {type(exc).__name__}: {exc}") from None

    async def job_pods(self, job: str) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        result = await self._request("GET", f"{path}?labelSelector={JOB_LABEL}%3D{job}")
        items = (result or {}).get("items") or []
        return [p for p in items if ((p.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL) == job]

    async def desired_replicas(self, job: str) -> int | None:
        cm = await self._request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{job}-config")
        try:
            value = json.loads(((cm or {}).get("data") or {}).get(CONFIG_KEY, "{}")).get("replicas")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    async def patch_report(self, pod: str, report: str) -> None:
        patch = {"metadata": {"annotations": {REPORT_ANNOTATION: report}}}
        await self._request("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{pod}", patch,
                            content_type="application/merge-patch+json")  # fmt: skip

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def discover_contacts(
    api: PodApi, job: str, me: str, *, have_contacts: bool
) -> tuple[tuple[str, str], ...]:
    """The job's other pods that have an IP, as (pod name, peer URL). Waits (listing again with
    a growing pause, saying so) until there is one, unless ``have_contacts`` (federation peers)."""
    pause, longest = DISCOVERY_RETRY_S
    said = 0.0
    while True:
        try:
            pods = await api.job_pods(job)
        except ApiFailed as exc:
            pods = []
            problem = f"cannot list the pods of job {job}: {exc}"
        else:
            problem = f"no other pod of job {job} has an IP yet"
        found = []
        for pod in pods:
            name = pod["metadata"]["name"]
            ip = (pod.get("status") or {}).get("podIP")
            if name != me and ip and not pod["metadata"].get("deletionTimestamp"):
                found.append((name, f"http://{ip}:{PEER_PORT}"))
        if found or have_contacts:
            log(f"discovered {len(found)} peer(s) of job {job}: {', '.join(n for n, _ in found) or 'none'}")
            return tuple(sorted(found))
        if time.monotonic() - said > 10:
            said = time.monotonic()
            log(f"{problem}; not ready until a peer is found (retrying)")
        await asyncio.sleep(pause)
        pause = min(longest, pause * 2)


class PodReporter:
    """Reports this sidecar's view on its own pod, and carries out the group's scale-in."""

    def __init__(
        self,
        api: PodApi,
        job: str,
        pod: str,
        runtime: Any,
        step: Callable[[], int | None],
        *,
        min_interval_s: float = 1.0,
        scale_poll_s: float = 2.0,
    ) -> None:
        self.api, self.job, self.pod, self.runtime, self.step = api, job, pod, runtime, step
        self.min_interval_s = min_interval_s
        self.scale_poll_s = scale_poll_s
        self.events: list[dict[str, Any]] = []
        self.leaving = False  # this member was chosen to leave on scale-in
        self.failures = 0
        self._last_members: list[str] | None = None
        self._last_sent: str | None = None

    def report(self, *, released: bool = False) -> str:
        state = self.runtime.state
        view = state.view
        members = list(view.members) if view is not None else []
        if view is not None and members != self._last_members:
            before = set(self._last_members or [])
            kind = "join" if set(members) > before else "leave" if set(members) < before else "change"
            if self._last_members is not None:
                self.events.append({"kind": kind, "epoch": view.epoch, "members": len(members),
                                    "t": round(time.time(), 3)})  # fmt: skip
            self._last_members = members
        return encode_report(
            job=self.job, pod=self.pod, epoch=view.epoch if view is not None else None,
            members=members, coordinator=view.coordinator if view is not None else None,
            step=self.step(), released=released, events=self.events,
        )  # fmt: skip

    async def send(self, text: str) -> bool:
        try:
            await self.api.patch_report(self.pod, text)
        except ApiFailed as exc:
            self.failures += 1
            log(f"report not written ({exc}); retrying with backoff")
            return False
        self.failures = 0
        self._last_sent = text
        return True

    def backoff_s(self) -> float:
        first, longest = BACKOFF_S
        return 0.0 if not self.failures else min(longest, first * 2 ** (self.failures - 1))

    async def run(self) -> None:
        """Report on changes (rate-limited) and every 10 s; check the requested size."""
        last_sent_at = -1e9
        last_scale_check = -1e9
        while True:
            now = time.monotonic()
            if now - last_scale_check >= self.scale_poll_s:
                last_scale_check = now
                await self._check_scale_in()
            text = self.report()
            if (text != self._last_sent or now - last_sent_at > 10.0) and now - last_sent_at >= max(
                self.min_interval_s, self.backoff_s()
            ):
                last_sent_at = now
                await self.send(text)
            async with self.runtime.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.runtime.changed.wait(), self.min_interval_s)

    async def _check_scale_in(self) -> None:
        state = self.runtime.state
        if self.leaving or state.status != sm.MEMBER or state.view is None:
            return
        try:
            desired = await self.api.desired_replicas(self.job)
        except ApiFailed as exc:
            log(f"cannot read the requested size ({exc})")
            return
        members = list(state.view.members)
        if desired is None or len(members) <= desired or self.pod not in members:
            return
        position = members.index(self.pod)
        if position >= desired:  # the same choice on every member of this view
            self.leaving = True
            log(f"scale-in to {desired}: member {position} of {len(members)} in epoch "
                f"{state.view.epoch} leaves")  # fmt: skip
            await self.runtime.apply(sm.RequestLeave())

    async def final(self, deadline_s: float = 10.0) -> None:
        """After a graceful leave: report ``released`` (retried until ``deadline_s``)."""
        text = self.report(released=True)
        deadline = time.monotonic() + deadline_s
        while not await self.send(text) and time.monotonic() < deadline:
            await asyncio.sleep(min(self.backoff_s(), max(0.0, deadline - time.monotonic())))
