"""Tells this node's operator when a peer's clock is off, or a peer refuses our party key for
its validity window: the skew gauge, a counter of our refused requests, and one line on stderr
and in the event log per episode (the decisions are :mod:`chaos_sidecar.clock_skew`'s)."""

from __future__ import annotations

import sys
import time

from chaos_sidecar import clock_skew, parties
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.security import Refusal, party_policy, party_signer

# what a peer's answer may name as its reason (anything else counts as "other": the label
# set stays bounded whatever a peer sends)
KNOWN_REASONS = frozenset({"unauthenticated", "expired", "bad_signature", "replayed", *parties.REASONS})


class ClockReport:
    def __init__(self, secret: bytes, metrics: SidecarMetrics, log: EventLog, window_s: float) -> None:
        self.secret = secret
        self.metrics = metrics
        self.log = log
        self.window_s = window_s
        self._reported: dict[str, tuple[float, float]] = {}  # peer -> (skew, monotonic s) last said
        self._key_refusals: set[tuple[str, str]] = set()  # (peer, reason) reported

    def peer_offset(self, peer: str, offset_s: float, measured: str) -> None:
        """A peer's clock minus ours (``measured`` from its ``request`` or its ``refusal``)."""
        self.metrics.clock_skew.labels(peer).set(offset_s)
        now_s = time.monotonic()
        if clock_skew.worth_reporting(offset_s, self.window_s, self._reported.get(peer), now_s):
            self._reported[peer] = (offset_s, now_s)
            line = clock_skew.skew_line(peer, offset_s, self.window_s)
            print(f"chaos-train sidecar: warning: {line}", file=sys.stderr, flush=True)
            self.log.write(Kind.CLOCK_SKEW, peer=peer, offset_s=round(offset_s, 3), measured=measured)
        elif abs(offset_s) <= self.window_s:  # back in step: a later skew is a new episode
            self._reported.pop(peer, None)
            self._key_refusals = {(p, r) for p, r in self._key_refusals if p != peer}

    def refused(self, refusal: Refusal | None, sent_ns: int, answered_ns: int) -> None:
        """A peer answered one of our requests with 401 (``refusal``: its signed answer, None
        when it carried none that checks)."""
        if refusal is None:
            self.metrics.refused_by_peers.labels("unverified").inc()
            return
        reason = refusal.reason if refusal.reason in KNOWN_REASONS else "other"
        self.metrics.refused_by_peers.labels(reason).inc()
        if reason not in clock_skew.CLOCK_REASONS:
            return
        offset_s = clock_skew.offset_from_refusal(refusal.clock_ns, sent_ns, answered_ns)
        self.peer_offset(refusal.refuser, offset_s, "refusal")
        if reason != "expired" and (refusal.refuser, reason) not in self._key_refusals:
            self._key_refusals.add((refusal.refuser, reason))
            line = clock_skew.key_window_line(
                refusal.refuser,
                reason,
                self._party(),
                refusal.clock_ns / 1e9,
                answered_ns / 1e9,
                self._window(),
            )
            print(f"chaos-train sidecar: warning: {line}", file=sys.stderr, flush=True)
            self.log.write(Kind.PARTY_KEY_REFUSED, peer=refusal.refuser, reason=reason, detail=line)

    def _party(self) -> str:
        signer = party_signer(self.secret)
        return signer.party if signer is not None else "?"

    def _window(self) -> tuple[float, float] | None:
        """Our key's window in our policy (the refusing peer's copy should say the same)."""
        signer, policy = party_signer(self.secret), party_policy(self.secret)
        if signer is None or policy is None:
            return None
        return parties.key_window(policy, signer.party, signer.public_key)  # type: ignore[arg-type]
