"""Sites: which joiners fetch the training state over the WAN, and which from a neighbour.

A *site* is a set of nodes on one fast network: an institution's machine room, an edge
location. Between sites runs the WAN, slow and shared by every transfer that crosses it. A
node names its site itself (``CHAOS_SITE``, ``chaos-train run`` with ``--site``); without a
name, its party in a multi-party job is its site, and a single-party job is one site.

When several nodes of a site pull the state in one view change and no member of their site
holds it, pulling all at once would carry the state over the WAN once per joiner, each at a
share of the link. Instead the site's first joiner (by id) pulls from the members, and the
site's other joiners wait for it and then pull from it and the members together: the shard
planner, given the measured links, takes most bytes from the neighbour over the LAN and from
the WAN only what shortens the transfer. The WAN carries the state about once per site.

Pure: the members decide it from what every one of them sees alike (the view, who holds the
newest state, each member's site from the epoch's store), so they agree without a message.
"""

from __future__ import annotations

SITE_KEY = "site/{}"  # in the epoch's store: each member's site, set before its group is built


def relays(providers: list[str], pulling: list[str], site_of: dict[str, str]) -> dict[str, str]:
    """For each joiner that should pull through a neighbour: that neighbour (a joiner of its
    site that pulls from the members first). A site holding the state among ``providers``,
    or with one joiner, pulls directly; so do joiners whose site is unknown."""
    holding = {site_of.get(p) for p in providers}
    by_site: dict[str, list[str]] = {}
    for node in pulling:
        site = site_of.get(node)
        if site is not None and site not in holding:
            by_site.setdefault(site, []).append(node)
    out: dict[str, str] = {}
    for nodes in by_site.values():
        first, *rest = sorted(nodes)
        out |= dict.fromkeys(rest, first)
    return out
