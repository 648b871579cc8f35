"""Prometheus metrics of one sidecar (prefix ``chaostrain_``), on its own registry.

Every name ends in its base unit (``_seconds``, ``_bytes``), as ``promtool check metrics``
wants. Everything is fed by the adapters from what the state machine and the puller report,
never computed by them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# protocol latencies run from tens of microseconds (one state-machine step) to seconds (a slow quorum)
_LATENCY_MS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)
LATENCY_BUCKETS = tuple(ms / 1000 for ms in _LATENCY_MS)
EVENT_KINDS = ("join", "leave", "remove", "rejoin", "topology")  # view changes (rejoin: new incarnation)
ROTATION_RESULTS = ("accepted", "promoted", "retired", "refused_short", "unreadable")
S_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PARTY_FILES = ("key", "policy")
PARTY_RELOAD_RESULTS = ("accepted", "refused", "unreadable")


class SidecarMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter(
            "chaostrain_events", "Membership events seen or decided, by kind", ["kind"], registry=r
        )
        for kind in EVENT_KINDS:  # at zero from the start: "no failures" shows as 0, not as no data
            self.events.labels(kind)
        self.decision_seconds = Histogram(
            "chaostrain_decision_latency_seconds",
            "Time to compute a new view (coordinator)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.agreement_seconds = Histogram(
            "chaostrain_agreement_latency_seconds",
            "Proposal to commit of a view at the proposer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.epoch = Gauge("chaostrain_view_epoch", "Epoch of the committed view", registry=r)
        self.members = Gauge("chaostrain_members", "Members of the committed view", registry=r)
        self.step = Gauge("chaostrain_step", "Training step reported by the local trainer", registry=r)
        self.transfer_bytes = Counter(
            "chaostrain_transfer_bytes", "Snapshot bytes pulled, by source", ["source"], registry=r
        )
        self.transfer_seconds = Counter(
            "chaostrain_transfer_seconds", "Seconds spent pulling from each source", ["source"], registry=r
        )
        self.replans = Counter("chaostrain_replans", "Transfers re-planned after a source failed", registry=r)
        self.scale_out_delay = Histogram(
            "chaostrain_scale_out_delay_seconds",
            "Join requested to the first completed step of this node",
            buckets=S_BUCKETS,
            registry=r,
        )
        self.idle = Counter("chaostrain_member_idle_seconds", "Seconds the local trainer paused", registry=r)
        self.bandwidth = Gauge(
            "chaostrain_link_bandwidth_bytes_per_second", "Estimated link bandwidth", ["peer"], registry=r
        )
        self.rtt = Gauge(
            "chaostrain_link_rtt_seconds", "Estimated link round-trip time", ["peer"], registry=r
        )
        self.rejected = Counter(
            "chaostrain_rejected_messages",
            "Peer messages or requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.no_majority = Gauge(
            "chaostrain_no_majority",
            "1 while this member reaches no majority of its view (nothing can commit)",
            registry=r,
        )
        self.majority_lost = Counter(
            "chaostrain_majority_lost",
            "Times this member stopped reaching a majority of its view",
            registry=r,
        )
        self.secret_rotations = Counter(
            "chaostrain_secret_rotations",
            "Join secret rotations, by result: accepted, promoted (signs now), retired (grace over), "
            "refused_short, unreadable",
            ["result"],
            registry=r,
        )
        for result in ROTATION_RESULTS:  # at zero from the start
            self.secret_rotations.labels(result)
        self.monitoring_bytes = Counter(
            "chaostrain_monitoring_sent_bytes",
            "Bytes sent on peer streams (heartbeats, protocol)",
            registry=r,
        )

        self._add_federation_metrics(r)

    def _add_federation_metrics(self, r: CollectorRegistry) -> None:
        """What an operator of one site needs to see about the others: clocks, refusals of its
        own requests, reloads of its party files, whether its advertised address reaches it."""
        self.clock_skew = Gauge(
            "chaostrain_clock_skew_seconds",
            "A peer's clock minus this node's, by peer: from the timestamp of its last authentic "
            "request, or from the clock its refusal of one of ours carried",
            ["peer"],
            registry=r,
        )
        self.refused_by_peers = Counter(
            "chaostrain_refused_by_peers",
            "This node's peer requests that peers refused, by the reason their signed answer gives "
            "(unverified: an answer without one that checks)",
            ["reason"],
            registry=r,
        )
        self.party_reloads = Counter(
            "chaostrain_party_reloads",
            "Changes of the party key file or the admission policy picked up, by file and result: "
            "accepted, refused (the old pair stays), unreadable",
            ["file", "result"],
            registry=r,
        )
        for file in PARTY_FILES:  # at zero from the start
            for result in PARTY_RELOAD_RESULTS:
                self.party_reloads.labels(file, result)
        self.advertise_reachable = Gauge(
            "chaostrain_advertise_reachable",
            "1 once this sidecar reached itself at its advertised URL, 0 while it does not (nothing "
            "answers there, or another process does)",
            registry=r,
        )

    def rejections(self) -> dict[str, int]:
        """Rejected messages by reason, read back from the counter (one source of truth)."""
        return {
            sample.labels["reason"]: int(sample.value)
            for family in self.rejected.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }
