"""Link descriptions for ``chaos-train local --hosts netns --links SPEC``.

Every node reaches the others through its own link (a veth pair into the root namespace,
which routes between nodes); what a node sends over it is shaped with ``tc``. SPEC is
``equal`` (no shaping), ``skewed`` (40, 20, 10, 10 MB/s for n0..n3, then repeating: the
benchmark's preset) or a JSON file ``{"rates_mbps": {"n0": 40, "n1": 20, ...}}`` (MB/s =
1e6 bytes/s; a node not named is unshaped).
"""

from __future__ import annotations

import json
from pathlib import Path

from chaos_sidecar.errors import InputError

SKEWED_MBPS = (40.0, 20.0, 10.0, 10.0)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise InputError(f"--links.rates_mbps.{key}", "listed twice")
        seen[key] = value
    return seen


def parse_links(spec: str, nodes: list[str]) -> dict[str, float | None]:
    """Upload rate in bytes/s (None: unshaped) of each of ``nodes``' links."""
    if spec == "equal":
        return dict.fromkeys(nodes)
    if spec == "skewed":
        return {node: SKEWED_MBPS[i % len(SKEWED_MBPS)] * 1e6 for i, node in enumerate(nodes)}
    path = Path(spec)
    if not path.is_file():
        raise InputError("--links", f"expected equal, skewed or a JSON file; {spec!r} does not exist")
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise InputError("--links", f"{spec}: not JSON: {exc}") from None
    rates = data.get("rates_mbps") if isinstance(data, dict) else None
    if not isinstance(rates, dict) or set(data) != {"rates_mbps"}:
        raise InputError("--links", f'{spec}: expected {{"rates_mbps": {{"NODE": MB/s, ...}}}}')
    result: dict[str, float | None] = dict.fromkeys(nodes)
    for node, rate in rates.items():
        field = f"--links.rates_mbps.{node}"
        if node not in result:
            raise InputError(field, f"unknown node (the job's nodes: {', '.join(nodes)})")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1e6:
            raise InputError(field, f"expected a rate in MB/s > 0, got {rate!r}")
        result[node] = float(rate) * 1e6
    return result
