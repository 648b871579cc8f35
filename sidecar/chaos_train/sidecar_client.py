"""The trainer's view of its local sidecar: blocking HTTP calls on loopback and a watcher
thread that long-polls for view changes, so a step boundary only reads a variable."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from chaos_sidecar.errors import InputError
from chaos_sidecar.protocol import local_api
from chaos_sidecar.protocol.local_api import CollectivePlan, NodeView, RendezvousEntry, TrainerStatus
from chaos_sidecar.protocol.messages import View


class SidecarLost(ConnectionError):
    """The local sidecar is gone: without it this node is no longer part of the group."""


class SidecarClient:
    def __init__(self, url: str, node_hint: str = "trainer") -> None:
        self.url = url.rstrip("/")
        self.node_hint = node_hint  # sent with every call: the sidecar's lease on this trainer
        self._latest: NodeView | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _call(
        self, method: str, path: str, body: dict | None = None, timeout: float = 70.0
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header(local_api.TRAINER_HEADER, self.node_hint)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:  # the sidecar's own errors are JSON; aiohttp's (400 with a text) are not
                detail = json.loads(body or b"{}")
            except ValueError:
                detail = {"message": body.decode(errors="replace")[:500]}
            detail = detail if isinstance(detail, dict) else {}
            # the status, and what the sidecar said (its JSON "error", or aiohttp's text)
            return {
                **detail,
                "error": exc.code,
                "message": str(detail.get("error", detail.get("message", ""))),
            }
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                raise SidecarLost(f"sidecar at {self.url} refused the connection") from None
            raise
        except ConnectionError as exc:  # it died while answering (RemoteDisconnected, a reset)
            raise SidecarLost(f"sidecar at {self.url} closed the connection: {exc!r}") from None

    def view(self) -> NodeView:
        return self._node_view(self._call("GET", local_api.VIEW))

    def wait_view(self, after: int, timeout: float = 10.0) -> NodeView:
        """Once the sidecar's epoch passes ``after`` (or it left), or after ``timeout`` s."""
        return self._node_view(self._call("GET", f"{local_api.WAIT_VIEW}?after={after}&timeout={timeout}"))

    def _node_view(self, answer: dict[str, Any]) -> NodeView:
        if "error" in answer:  # only a broken sidecar refuses its own trainer's view call
            raise SidecarLost(f"sidecar at {self.url} answered the view call with {answer}")
        return NodeView.from_json(answer)

    def node_host(self) -> str:
        """The host part of the address peers reach this node at: the trainer binds there."""
        host = urlsplit(self.view().address).hostname
        if not host:
            raise SidecarLost(f"sidecar at {self.url} advertises no host")
        return host

    def publish_rendezvous(self, entry: RendezvousEntry) -> None:
        answer = self._call("POST", local_api.RENDEZVOUS, entry.to_json(), timeout=10)
        if "error" in answer:
            raise RuntimeError(f"publishing the rendezvous of epoch {entry.epoch}: {answer}")

    def rendezvous_status(self, epoch: int, host: str) -> TrainerStatus | None:
        """What ``host``'s sidecar says of its trainer for ``epoch``; None if it could not be asked."""
        answer = self._call("GET", f"{local_api.RENDEZVOUS}?epoch={epoch}&host={host}", timeout=10)
        if "error" in answer:
            return None
        try:
            return TrainerStatus.from_json(answer)
        except InputError:
            return None

    def collective(self, members: list[str]) -> CollectivePlan:
        """How the collectives of a view of ``members`` cross parties (see CollectivePlan)."""
        answer = self._call("GET", f"{local_api.COLLECTIVE}?members=" + ",".join(members), timeout=10)
        if "error" in answer:
            raise RuntimeError(f"the sidecar's collective plan: {answer.get('message') or answer['error']}")
        return CollectivePlan.from_json(answer)

    def report(self, **fields: float | int) -> None:
        """Progress for the sidecar's metrics; best effort (a missing sidecar is not fatal)."""
        with contextlib.suppress(OSError):
            self._call("POST", local_api.REPORT, dict(fields), timeout=2.0)

    def join(self) -> None:
        self._call("POST", local_api.JOIN)

    def leave(self) -> None:
        self._call("POST", local_api.LEAVE)

    def pull(self, name: str, sources: list[str], nearby: list[str] | None = None) -> dict[str, Any]:
        body = {"name": name, "sources": sources, **({"nearby": nearby} if nearby else {})}
        return self._call("POST", local_api.PULL, body, timeout=600)

    def links(self, peers: list[str]) -> dict[str, dict[str, float | None]]:
        """Estimated bandwidth (bytes/s) and RTT of the links from ``peers`` to this node."""
        return self._call("GET", f"{local_api.LINKS}?peers=" + ",".join(peers), timeout=30)

    # --- watcher ----------------------------------------------------------------------------

    def start_watching(self) -> None:
        self._latest = self.view()
        self._thread = threading.Thread(target=self._watch, name="view-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                latest = self.wait_view(self.latest_epoch, timeout=5.0)
            except (OSError, ValueError):
                time.sleep(0.05)  # the sidecar restarts or is going away; try again
                continue
            with self._lock:
                self._latest = latest

    @property
    def latest_epoch(self) -> int:
        """The newest view's epoch the watcher has seen (0 before the first)."""
        view = self.latest_view
        return view.epoch if view is not None else 0

    @property
    def latest_view(self) -> View | None:
        """The newest view the watcher has seen (None before the first)."""
        with self._lock:
            return self._latest.view if self._latest is not None else None

    def stop(self) -> None:
        self._stop.set()
