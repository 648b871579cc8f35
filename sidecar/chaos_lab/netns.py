"""Emulated links for tests and benchmarks: network namespaces, veth pairs and tc shaping.

``star(n, rates)`` builds ``n`` namespaces, each joined to the root namespace by a veth pair
whose namespace end is shaped to ``rates[i]`` bytes/s with a token bucket filter (``tc tbf``).
A process started with :meth:`Star.wrap` runs inside namespace ``i`` and reaches the root
namespace at :meth:`Star.root_ip`; the root reaches it at :meth:`Star.ip`. Needs root and
iproute2; :func:`unavailable` says why not when it cannot run.

With ``routed=True`` the namespaces also reach each other through the root namespace (IP
forwarding on for the star's lifetime), and :meth:`Star.partition` cuts every path between
two sets of namespaces with blackhole routes (packets vanish, as on a failed WAN link) until
:meth:`Star.heal`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
PREFIX = "chaos"
# a namespace's name carries the pid of the process that made it: namespaces whose maker is
# gone (a harness that crashed or was killed) are removed by the next run (remove_stale)
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]+)x[0-9a-f]+n\d+$")
# ``ip netns exec`` mounts /etc/netns/<ns>/<file> over /etc/<file>. The machine's resolver is
# not reachable from a namespace, and torch's TCPStore and gloo look up the name of every peer
# that connects: each lookup waited 10 s for it, so every rendezvous and process group took
# 10-20 s. A resolver on the namespace's own loopback, where nothing listens, fails at once.
# Nothing here needs names: nodes advertise their addresses.
NETNS_ETC = Path("/etc/netns")
RESOLV_CONF = (
    "# chaos_lab.netns: no DNS in this namespace; lookups fail at once\n"
    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
)


def owned_tag() -> str:
    """A tag for a star made by this process (see remove_stale)."""
    return f"{os.getpid():x}x{uuid.uuid4().hex[:2]}"  # short: veth names hold 15 characters


def remove_stale() -> list[str]:
    """Delete the namespaces (and with them their veth pairs) of runs whose process is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    stale = []
    for name in listed:
        match = _NAME.match(name)
        if match and not Path(f"/proc/{int(match.group(1), 16)}").exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
            stale.append(name)
    return stale


def unavailable() -> str | None:
    """Why namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    return None


def _failed(exc: subprocess.CalledProcessError) -> RuntimeError:
    return RuntimeError(f"building namespaces failed: {' '.join(exc.cmd)}: {exc.stderr.strip()}")


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class _Namespaces:
    """What Star and Sites share: names, addresses, starting a command inside a namespace,
    and creating and deleting the namespaces (``tag``, ``subnet``, ``created``: their fields)."""

    tag: str
    subnet: int
    created: list[str]

    def name(self, i: int) -> str:
        return f"{PREFIX}{self.tag}n{i}"

    def ip(self, i: int) -> str:
        return f"10.{self.subnet}.{i}.1"

    def wrap(self, i: int, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name(i), *cmd]

    def _add_namespace(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.created.append(ns)
        (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / ns / "resolv.conf").write_text(RESOLV_CONF)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def _delete_namespaces(self) -> None:
        for ns in self.created:  # deleting a namespace removes its veth pairs too
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self.created.clear()


@dataclass
class Star(_Namespaces):
    count: int
    rates_Bps: list[float | None]
    tag: str = field(default_factory=owned_tag)
    subnet: int = 77
    routed: bool = False
    created: list[str] = field(default_factory=list)
    blackholes: list[tuple[int, int]] = field(default_factory=list)
    _forwarding: str | None = None

    def root_ip(self, i: int) -> str:
        return f"10.{self.subnet}.{i}.2"

    def __enter__(self) -> Star:
        try:
            for i in range(self.count):
                ns, inner, outer = self.name(i), f"c{self.tag}i{i}", f"c{self.tag}o{i}"
                self._add_namespace(ns)
                _run("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ip(i)}/30", "dev", inner)
                _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
                _run("ip", "addr", "add", f"{self.root_ip(i)}/30", "dev", outer)
                _run("ip", "link", "set", outer, "up")
                if self.rates_Bps[i]:
                    self._shape(i, self.rates_Bps[i], "add")
            if self.routed:
                self._forwarding = FORWARDING.read_text().strip()
                FORWARDING.write_text("1\n")
                for i in range(self.count):
                    _run(
                        "ip",
                        "netns",
                        "exec",
                        self.name(i),
                        "ip",
                        "route",
                        "add",
                        "default",
                        "via",
                        self.root_ip(i),
                    )
        except subprocess.CalledProcessError as exc:
            self.__exit__()
            raise _failed(exc) from None
        return self

    def _shape(self, i: int, rate_Bps: float, verb: str) -> None:
        """Shape what namespace ``i`` sends (its uploads) at ``rate_Bps`` bytes/s."""
        bits = int(rate_Bps * 8)
        burst = max(16 * 1024, int(rate_Bps / 250))
        _run("ip", "netns", "exec", self.name(i), "tc", "qdisc", verb, "dev", f"c{self.tag}i{i}", "root",
             "tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", "100ms")  # fmt: skip

    def set_rate(self, i: int, rate_Bps: float | None) -> None:
        """Change (or with None, restore) namespace ``i``'s upload rate: a link slows down."""
        rate = rate_Bps or self.rates_Bps[i]
        if rate:
            self._shape(i, rate, "replace")
        else:
            subprocess.run(["ip", "netns", "exec", self.name(i), "tc", "qdisc", "del", "dev",
                            f"c{self.tag}i{i}", "root"], capture_output=True)  # fmt: skip

    def cut(self, a: int, b: int) -> None:
        """Drop every packet between namespaces ``a`` and ``b``, both ways (a failed link)."""
        self.partition([a], [b])

    def restore(self, a: int, b: int) -> None:
        """Undo :meth:`cut` for ``a`` and ``b`` (both ways)."""
        for src, dst in ((a, b), (b, a)):
            if (src, dst) in self.blackholes:
                self._blackhole("del", src, dst)
                self.blackholes.remove((src, dst))

    def partition(self, side_a: list[int], side_b: list[int]) -> None:
        """Drop every packet between the two sides, both ways."""
        for a in side_a:
            for b in side_b:
                for src, dst in ((a, b), (b, a)):
                    self._blackhole("add", src, dst)
                    self.blackholes.append((src, dst))

    def heal(self) -> None:
        for src, dst in self.blackholes:
            self._blackhole("del", src, dst)
        self.blackholes.clear()

    def _blackhole(self, verb: str, src: int, dst: int) -> None:
        """Add or delete the route in ``src`` that drops every packet to ``dst``."""
        _run("ip", "netns", "exec", self.name(src), "ip", "route", verb, "blackhole", f"{self.ip(dst)}/32")

    def __exit__(self, *exc: object) -> None:
        self._delete_namespaces()
        if self._forwarding is not None:
            FORWARDING.write_text(self._forwarding + "\n")
            self._forwarding = None


@dataclass
class Sites(_Namespaces):
    """Two sites joined by one WAN link, every node in its own namespace.

    Each site has a router namespace; each node of the site is joined to it by its own veth
    pair (its LAN link, unshaped: the kernel's veth speed). The two routers are joined by one
    veth pair, the WAN link, shaped both ways to ``wan_Bps`` bytes/s (tc tbf on each end).
    Nodes reach every other node through the routers; nothing is added to the root namespace
    (no addresses, routes or forwarding there). Node ``i`` (0-based over ``sizes``, site by
    site) is at :meth:`ip`; :meth:`wrap` starts a command inside its namespace.
    :meth:`cut_wan` drops every packet between the sites (blackhole routes in the routers:
    packets vanish, as on a failed WAN link) until :meth:`heal_wan`. :meth:`link_bytes` reads
    the kernel's byte counters of each link, at its router end."""

    sizes: tuple[int, int]
    wan_Bps: float
    tag: str = field(default_factory=owned_tag)
    subnet: int = 81
    created: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.sizes)

    def site(self, i: int) -> int:
        return 0 if i < self.sizes[0] else 1

    def router(self, site: int) -> str:
        return self.name(100 + site)  # the name remove_stale recognises

    def _gateway(self, i: int) -> str:
        return f"10.{self.subnet}.{i}.2"

    def _wan_ip(self, site: int) -> str:
        return f"10.{self.subnet}.250.{site + 1}"

    def lan_link(self, i: int) -> str:
        """Node ``i``'s link, by the name of its router end."""
        return f"c{self.tag}o{i}"

    def wan_link(self, site: int) -> str:
        """The WAN link, by the name of its end in ``site``'s router."""
        return f"c{self.tag}w{site}"

    def __enter__(self) -> Sites:
        try:
            for site in (0, 1):
                router = self.router(site)
                self._add_namespace(router)
                _run("ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            for i in range(self.count):
                ns, inner, outer, router = (
                    self.name(i),
                    f"c{self.tag}i{i}",
                    self.lan_link(i),
                    self.router(self.site(i)),
                )
                self._add_namespace(ns)
                _run("ip", "link", "add", inner, "netns", ns, "type", "veth",
                     "peer", "name", outer, "netns", router)  # fmt: skip
                _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/30", "dev", inner)
                _run("ip", "-n", ns, "link", "set", inner, "up")
                _run("ip", "-n", router, "addr", "add", f"{self._gateway(i)}/30", "dev", outer)
                _run("ip", "-n", router, "link", "set", outer, "up")
                _run("ip", "-n", ns, "route", "add", "default", "via", self._gateway(i))
            ends = [self.wan_link(0), self.wan_link(1)]
            _run("ip", "link", "add", ends[0], "netns", self.router(0), "type", "veth",
                 "peer", "name", ends[1], "netns", self.router(1))  # fmt: skip
            bits = int(self.wan_Bps * 8)
            burst = max(16 * 1024, int(self.wan_Bps / 250))
            for site in (0, 1):
                router, end = self.router(site), ends[site]
                _run("ip", "-n", router, "addr", "add", f"{self._wan_ip(site)}/30", "dev", end)
                _run("ip", "-n", router, "link", "set", end, "up")
                _run("ip", "netns", "exec", router, "tc", "qdisc", "add", "dev", end, "root", "tbf", "rate",
                     f"{bits}bit", "burst", str(burst), "latency", "100ms")  # fmt: skip
            for i in range(self.count):
                self._route_across(i, "add")
        except subprocess.CalledProcessError as exc:
            self.__exit__()
            raise _failed(exc) from None
        return self

    def _route_across(self, i: int, verb: str, blackhole: bool = False) -> None:
        """In the other site's router: the route to node ``i``, over the WAN (or a blackhole)."""
        other = 1 - self.site(i)
        how = (
            ["blackhole", f"{self.ip(i)}/32"]
            if blackhole
            else [f"{self.ip(i)}/32", "via", self._wan_ip(1 - other)]
        )
        _run("ip", "-n", self.router(other), "route", verb, *how)

    def cut_wan(self) -> None:
        """Every packet between the sites vanishes, both ways."""
        for i in range(self.count):
            self._route_across(i, "replace", blackhole=True)

    def heal_wan(self) -> None:
        for i in range(self.count):
            self._route_across(i, "replace")

    def link_bytes(self) -> dict[str, tuple[int, int]]:
        """(bytes into the router, bytes out of it) of every link: ``lan<i>`` and ``wan``
        (at site 0's router: in is from site 1, out is to site 1)."""
        counters = {}
        links = [(f"lan{i}", self.router(self.site(i)), self.lan_link(i)) for i in range(self.count)]
        for name, router, dev in [*links, ("wan", self.router(0), self.wan_link(0))]:
            stats = Path(f"/sys/class/net/{dev}/statistics")  # read inside the router's namespace
            read = subprocess.run(
                ["ip", "netns", "exec", router, "cat", str(stats / "rx_bytes"), str(stats / "tx_bytes")],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            rx, tx = (int(v) for v in read.stdout.split())
            counters[name] = (rx, tx)
        return counters

    def __exit__(self, *exc: object) -> None:
        self._delete_namespaces()
