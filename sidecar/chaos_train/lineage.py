"""Which members' state the group goes on from when several hold the newest step.

A step number alone does not name a state. A member cut off mid-step can complete an
all-reduce that the others gave up (it received every contribution, they did not receive its
own), while the others take that step again without it and get another outcome. If it came
back just when they stood at that same step, the step numbers would call the two states level,
nobody would pull, and the replicas would differ for the rest of the job.

So each member also names the group in which its state's last step was taken: its *lineage*,
the meeting's random name read as an integer (``token``). The founding state is lineage 0;
``FOLLOWS`` marks a state rebuilt from the members' own snapshot or gradient log (an overlap
joiner's), which is theirs whatever their lineage. Among the holders of the newest step, the
lineage most of them hold wins (a tie: the smaller token). The others at that step pull its
state like any member behind. Pure: every member decides from the same all-gather.
"""

from __future__ import annotations

from collections import Counter

FOUNDING = 0
FOLLOWS = -1


def token(group: str) -> int:
    """A group's lineage: its meeting name (hex, chaos_train.rendezvous) as an integer."""
    return int(group, 16) if group else FOUNDING


def providers(held: list[int], lineages: list[int]) -> tuple[list[int], int]:
    """(the ranks whose state the group goes on from, that state's lineage): the holders of
    the newest step in ``held`` whose lineage is the one most of them hold, or FOLLOWS."""
    newest = max(held)
    at_newest = [rank for rank, step in enumerate(held) if step == newest]
    named = Counter(lineages[rank] for rank in at_newest if lineages[rank] != FOLLOWS)
    if not named:
        return at_newest, FOLLOWS
    winner = min(named, key=lambda lineage: (-named[lineage], lineage))
    return [rank for rank in at_newest if lineages[rank] in (winner, FOLLOWS)], winner
