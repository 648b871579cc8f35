"""The only module that talks to the Kubernetes API (through the official client).

Every call runs in a worker thread (the client is synchronous). Errors are classified here:
409 on create means "exists" (then patched: idempotent apply), 404 on delete is fine,
5xx/429 become :class:`kopf.TemporaryError` (retried with a delay), 403 becomes
:class:`Forbidden` (permanent until RBAC changes; the handler reports it as a condition).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from chaos_operator.settings import CONFIG

_PLURALS = {"Service": "services", "ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts",
            "Pod": "pods", "Role": "roles", "RoleBinding": "rolebindings",
            "NetworkPolicy": "networkpolicies", "Secret": "secrets"}  # fmt: skip
_api: client.ApiClient | None = None


class Forbidden(kopf.PermanentError):
    """The operator's service account may not do this (RBAC)."""


class ApiError(kopf.PermanentError):
    """Any other client error (4xx): the request itself is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def connect(host: str | None = None) -> None:
    """Use ``host`` (tests: the API emulator), else in-cluster config, else kubeconfig."""
    global _api
    if host is not None:
        configuration = client.Configuration()
        configuration.host = host
        _api = client.ApiClient(configuration)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    _api = client.ApiClient()


def _path(obj_or_kind: dict[str, Any] | str, namespace: str, name: str | None = None) -> str:
    if isinstance(obj_or_kind, dict):
        api_version, kind = obj_or_kind["apiVersion"], obj_or_kind["kind"]
    else:
        api_version, kind = "v1", obj_or_kind
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


async def _call(method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                query: list | None = None) -> Any:  # fmt: skip
    if _api is None:
        connect()
    assert _api is not None

    def call() -> Any:
        method_, url, headers, payload, _ = _api.param_serialize(
            method, path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"],
        )  # fmt: skip
        response = _api.call_api(method_, url, header_params=headers, body=payload)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(response.data or b"null")

    try:
        return await asyncio.to_thread(call)
    except ApiException as exc:
        if exc.status == 403:
            raise Forbidden(f"{method} {path}: forbidden ({exc.reason})") from None
        if exc.status in (429,) or exc.status >= 500:
            raise kopf.TemporaryError(
                f"{method} {path}: {exc.status} {exc.reason}", delay=CONFIG.retry_delay_s
            ) from None
        raise ApiError(exc.status, f"{method} {path}: {exc.status} {exc.reason}") from None


async def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Create ``obj``, or merge-patch it if it exists (409): idempotent."""
    meta = obj["metadata"]
    try:
        return await _call("POST", _path(obj, meta["namespace"]), obj)
    except ApiError as exc:
        if exc.status != 409:
            raise
    return await _call("PATCH", _path(obj, meta["namespace"], meta["name"]), obj,
                       content_type="application/merge-patch+json")  # fmt: skip


async def create_once(obj: dict[str, Any]) -> bool:
    """Create ``obj`` unless it exists (409: kept as it is, never overwritten). True if created."""
    meta = obj["metadata"]
    try:
        await _call("POST", _path(obj, meta["namespace"]), obj)
    except ApiError as exc:
        if exc.status != 409:
            raise
        return False
    return True


async def ensure(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the API has it: created when missing; one that exists is kept as it is (what
    the API server filled in, such as a Service's allocated nodePort, stays), and merge-patched
    only when its ``spec.type`` differs from ``obj``'s."""
    meta = obj["metadata"]
    current = await get(obj["kind"], meta["namespace"], meta["name"])
    if current is None:
        try:
            return await _call("POST", _path(obj, meta["namespace"]), obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
        current = await get(obj["kind"], meta["namespace"], meta["name"]) or {}
    if (current.get("spec") or {}).get("type") != obj["spec"].get("type"):
        return await apply(obj)
    return current


async def delete_pod(namespace: str, name: str) -> None:
    try:
        await _call("DELETE", _path("Pod", namespace, name))
    except ApiError as exc:
        if exc.status != 404:
            raise


async def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    result = await _call("GET", _path("Pod", namespace), query=[("labelSelector", selector)])
    return list(result.get("items") or [])


async def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A core (v1) object, or None when it does not exist."""
    try:
        return await _call("GET", _path(kind, namespace, name))
    except ApiError as exc:
        if exc.status != 404:
            raise
    return None
