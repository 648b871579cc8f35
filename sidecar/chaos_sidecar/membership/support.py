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
from collections.abc import Set as AbstractSet
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
    # sets sorted lately (a heartbeat lists whom its sender hears, sorted): (set, sorted tuple)
    _ordered: tuple[tuple[AbstractSet[str], tuple[str, ...]], ...] = ()
    _recent: tuple[frozenset[str], ...] = ()  # see canonical

    def copy(self) -> SupportIndex:
        return SupportIndex(
            dict(self.counted),
            Counter(self.counts),
            dict(self._missing),
            self._view_members,
            self._view,
            self._ordered,
            self._recent,
        )

    def sync(self, heard: Mapping[str, frozenset[str]]) -> None:
        """Count exactly ``heard`` (reporter -> whom it hears, fresh reports only)."""
        counted = self.counted
        for reporter in counted.keys() - heard.keys():
            self.counts.subtract(counted.pop(reporter) - {reporter})
        get = counted.get
        for reporter in [r for r, hears in heard.items() if get(r) is not hears]:
            self.count(reporter, heard[reporter])

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
        get = self.counts.get
        counts = {m: 1 + get(m, 0) for m in inside}
        for reporter in self.counted.keys() - inside:
            for m in self.counted[reporter] & inside:
                if m != reporter:
                    counts[m] -= 1
        return counts

    def view_set(self, view_members: tuple[str, ...]) -> frozenset[str]:
        """``frozenset(view_members)``, made once per view (the tuple object)."""
        if view_members is not self._view_members:
            self._missing = {}
            self._view_members = view_members
            self._view = frozenset(view_members)
        return self._view

    def canonical(self, hears: frozenset[str]) -> frozenset[str]:
        """A set equal to ``hears`` that is already held, if one of the last few is: at 1,000
        members, a thousand reports that each hold their own copy of one set are a million
        references for the collector to walk, a few milliseconds per full collection."""
        for known in self._recent:
            if known == hears:
                return known
        self._recent = (hears, *self._recent[:2])
        return hears

    def ordered(self, members: AbstractSet[str]) -> tuple[str, ...]:
        """``tuple(sorted(members))``, remembered for the last few sets: a member sends the
        same sets, of up to 1,000 names, in heartbeat after heartbeat (comparing two sets
        costs a fraction of sorting one)."""
        for known, ordered in self._ordered:
            if known == members:
                return ordered
        ordered = tuple(sorted(members))
        self._ordered = ((frozenset(members), ordered), *self._ordered[:3])
        return ordered

    def lacking(
        self, view_members: tuple[str, ...], kind: str, sets: Iterable[tuple[str, frozenset[str]]]
    ) -> list[tuple[str, frozenset[str]]]:
        """``(a, missing(view_members, (kind, a), hears))`` for each ``(a, hears)``, only where
        something is missing, in one loop."""
        view = self.view_set(view_members)
        known, out = self._missing, []
        for a, hears in sets:
            key = (kind, a)
            entry = known.get(key)
            if entry is None or entry[0] is not hears:
                entry = known[key] = (hears, view - hears)
            if entry[1]:
                out.append((a, entry[1]))
        return out

    def missing(self, view_members: tuple[str, ...], key: Hashable, hears: frozenset[str]) -> frozenset[str]:
        """The view's members missing from ``hears``, remembered per ``key`` while the set and
        the view's member tuple stay the same objects, so asking about every member costs O(n)
        when nothing changed."""
        self.view_set(view_members)
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
