"""A Kubernetes NetworkPolicy's ingress rules, evaluated on a connection and compiled to nftables.

``allows(policy, namespace, source, port)`` answers as a CNI enforcing the policy would for a
connection from ``source`` to a pod the policy selects (in ``namespace``): pod and namespace
selectors (``matchLabels``, ``matchExpressions``), ``ipBlock`` with ``except``, numbered and
named ports, ``endPort``. ``nft_ruleset`` turns the same rules into an nftables table for a
network namespace standing in for a selected pod, given the endpoints that exist (who has which
address and labels): the lab enforces the rendered policy on real sockets with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Endpoint:
    """A source of connections: a pod (its labels and its namespace's labels) or, with both
    None, an address outside the cluster."""

    ip: str
    labels: dict[str, str] | None
    namespace_labels: dict[str, str] | None

    def __hash__(self) -> int:
        return hash(self.ip)


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _in_block(ip: str, block: dict[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"], strict=False)
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])


def peer_matches(peer: dict[str, Any], namespace: str, source: Endpoint) -> bool:
    if "ipBlock" in peer:
        return _in_block(source.ip, peer["ipBlock"])
    if source.labels is None or source.namespace_labels is None:
        return False  # selectors match pods only
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace_labels.get(NAMESPACE_NAME_LABEL) != namespace:
        return False  # a podSelector alone means the policy's own namespace
    return selector_matches(peer.get("podSelector"), source.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str, named: dict[str, int]) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        want = entry.get("port")
        if want is None:
            return True
        number = named.get(want) if isinstance(want, str) else want
        if number is not None and number <= port <= entry.get("endPort", number):
            return True
    return False


def allows(
    policy: dict[str, Any],
    namespace: str,
    source: Endpoint,
    port: int,
    protocol: str = "TCP",
    named_ports: dict[str, int] | None = None,
) -> bool:
    """Whether ``policy`` (selecting the destination pod) admits this connection."""
    spec = policy["spec"]
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        return True
    for rule in spec.get("ingress") or []:
        peers = rule.get("from") or []
        if peers and not any(peer_matches(p, namespace, source) for p in peers):
            continue
        if port_matches(rule.get("ports"), port, protocol, named_ports or {}):
            return True
    return False


def _nft_ports(
    ports: list[dict[str, Any]] | None, named: dict[str, int], port_map: dict[int, int]
) -> list[str]:
    if not ports:
        return [""]
    out = []
    for entry in ports:
        proto = entry.get("protocol", "TCP").lower()
        want = entry.get("port")
        if want is None:
            out.append(f"meta l4proto {proto}")
            continue
        number = named[want] if isinstance(want, str) else want
        end = entry.get("endPort", number)
        number, end = port_map.get(number, number), port_map.get(end, end)
        out.append(f"{proto} dport {number}" + (f"-{end}" if end != number else ""))
    return out


def nft_ruleset(
    policy: dict[str, Any],
    namespace: str,
    endpoints: list[Endpoint],
    *,
    host_ips: tuple[str, ...] = (),
    named_ports: dict[str, int] | None = None,
    port_map: dict[int, int] | None = None,
    table: str = "chaos_policy",
) -> str:
    """An nftables table enforcing ``policy``'s ingress rules in a selected pod's namespace.
    Pod and namespace selectors become the addresses of the ``endpoints`` they match; ``ipBlock``
    stays a prefix. ``host_ips`` (the node) are admitted as CNIs do for kubelet probes;
    ``port_map`` moves a port the policy names to where the process listens here (the lab's
    sidecars take free ports). What no rule admits is refused: TCP with a reset, the rest dropped.
    The table replaces one of the same name atomically (one nft transaction)."""
    named = named_ports or {}
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        '    iif "lo" accept',
        "    ct state established,related accept",
        "    meta l4proto icmp accept",
    ]
    lines += [f"    ip saddr {ip} accept" for ip in host_ips]
    for rule in policy["spec"].get("ingress") or []:
        sources: list[str] = []
        for peer in rule.get("from") or []:
            if "ipBlock" in peer:
                block = peer["ipBlock"]
                family = "ip6" if ipaddress.ip_network(block["cidr"], strict=False).version == 6 else "ip"
                excepts = "".join(f" {family} saddr != {e}" for e in block.get("except") or [])
                sources.append(f"{family} saddr {block['cidr']}{excepts}")
            else:
                sources += [f"ip saddr {e.ip}" for e in endpoints if peer_matches(peer, namespace, e)]
        if rule.get("from") and not sources:
            continue  # matches nobody that exists
        for source in sources or [""]:
            for ports in _nft_ports(rule.get("ports"), named, port_map or {}):
                lines.append(
                    f"    {' '.join(x for x in (source, ports) if x)} accept".replace("     ", "    ")
                )
    lines += ["    meta l4proto tcp reject with tcp reset", "    drop", "  }", "}"]
    return "\n".join(lines) + "\n"
