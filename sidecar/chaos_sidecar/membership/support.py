"""Who hears whom, counted incrementally: the support index behind the membership machine.

A coordinator judges every member by its *support*: the member itself plus the members whose
fresh reports say they hear it. Counted from scratch that is every report against every
member, O(n^2) on every tick: 1,000 members cost ~60 ms per tick and per decision. Reports
rarely change, though: a heartbeat usually repeats what its sender said last time, and the
machine keeps the previous set object then (see ``machine._on_heartbeat``). So the index keeps
the sum of the counted sets, and brings it up to date by comparing each reporter's set with
the one it counted *by identity*: O(n) when nothing changed, plus O(n) per report that did.

Pure and deterministic like the machine: it holds only what the machine's state already
says, and :meth:`SupportIndex.sync` makes it exactly that state's count again, whatever
state it was synchronised with before (a test checks it against the count from scratch).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class SupportIndex:
    # reporter -> the set of members it hears that is in ``counts`` now
    counted: dict[str, frozenset[str]] = field(default_factory=dict)
    # member -> how many counted reporters, other than itself, hear it
    counts: Counter[str] = field(default_factory=Counter)
    # key (say, which report of which member) -> (that set, the view's members missing from it)
    _missing: dict[Hashable, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    _view_members: tuple[str, ...] = ()
    _view: frozenset[str] = frozenset()

    def copy(self) -> SupportIndex:
        return SupportIndex(
            dict(self.counted), Counter(self.counts), dict(self._missing), self._view_members, self._view
        )

    def sync(self, heard: Mapping[str, frozenset[str]]) -> None:
        """Count exactly ``heard`` (reporter -> whom it hears, fresh reports only)."""
        for reporter in [r for r in self.counted if r not in heard]:
            self.counts.subtract(self.counted.pop(reporter) - {reporter})
        for reporter, hears in heard.items():
            if self.counted.get(reporter) is not hears:
                self.count(reporter, hears)

    def count(self, reporter: str, hears: frozenset[str]) -> None:
        """Count ``hears`` as ``reporter``'s set from now on. The machine calls this as each
        report arrives, so that a decision only has to take back the reports gone stale."""
        old = self.counted.get(reporter)
        self.counted[reporter] = hears
        if old is None:
            self.counts.update(hears - {reporter})
        elif old is not hears:
            self.counts.subtract(old - hears - {reporter})
            self.counts.update(hears - old - {reporter})

    def support(self, members: Collection[str]) -> dict[str, int]:
        """Per member of ``members``: 1 (itself) plus the counted reporters *among members*
        that hear it. Reporters outside ``members`` are taken back out, one set each: they
        are few (members leaving or being removed)."""
        inside = members if isinstance(members, (set, frozenset)) else set(members)
        counts = {m: 1 + self.counts[m] for m in inside}
        for reporter, hears in self.counted.items():
            if reporter not in inside:
                for m in hears & inside:
                    if m != reporter:
                        counts[m] -= 1
        return counts

    def missing(self, view_members: tuple[str, ...], key: Hashable, hears: frozenset[str]) -> frozenset[str]:
        """The view's members missing from ``hears``, remembered per ``key`` while the set and
        the view's member tuple stay the same objects, so asking about every member costs O(n)
        when nothing changed."""
        if view_members is not self._view_members:
            self._missing = {}
            self._view_members = view_members
            self._view = frozenset(view_members)
        known = self._missing.get(key)
        if known is not None and known[0] is hears:
            return known[1]
        result = self._view - hears
        self._missing[key] = (hears, result)
        return result


def support_from_scratch(heard: Mapping[str, Iterable[str]], members: Collection[str]) -> dict[str, int]:
    """The same count done the slow way, for tests and the simulator's cross-check."""
    inside = set(members)
    counts = dict.fromkeys(inside, 1)
    for reporter, hears in heard.items():
        if reporter in inside:
            for m in set(hears) & inside:
                if m != reporter:
                    counts[m] += 1
    return counts
