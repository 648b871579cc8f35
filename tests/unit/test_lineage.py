"""chaos_train.lineage: members level by step but not by state (a minority member completed an
all-reduce the others gave up, and they took that step again) are told apart, and the group
goes on from the state most of them hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chaos_train.lineage import FOLLOWS, FOUNDING, providers, token


def test_a_minority_that_completed_a_step_the_majority_redid_pulls_the_majoritys_state() -> None:
    majority, minority = token("a2e13658dff9"), token("b4816cc08ac5")
    held = [4120, 4120, 4120, 4120, 4120]
    assert providers(held, [majority, majority, majority, minority, minority]) == ([0, 1, 2], majority)
    # one step later the minority is behind anyway: the step decides, as always
    assert providers([4121, 4121, 4121, 4120, 4120], [majority] * 3 + [minority] * 2) == ([0, 1, 2], majority)


def test_one_lineage_the_founding_state_and_a_follower_are_level() -> None:
    assert providers([0, 0, -1], [FOUNDING, FOUNDING, FOUNDING]) == ([0, 1], FOUNDING)
    group = token("00ff00ff00ff")
    assert providers([9, 9, 9], [group, FOLLOWS, group]) == ([0, 1, 2], group)
    assert providers([9, 9], [FOLLOWS, FOLLOWS]) == ([0, 1], FOLLOWS)
    assert providers([7, 7], [token("000000000002"), token("000000000001")]) == ([1], 1)  # a tie: smaller


@given(
    held=st.lists(st.integers(min_value=-1, max_value=3), min_size=1, max_size=9),
    data=st.data(),
)
def test_the_providers_hold_the_newest_step_and_one_lineage_most_of_them_hold(held, data) -> None:
    lineages = data.draw(
        st.lists(st.sampled_from([FOLLOWS, FOUNDING, 5, 9]), min_size=len(held), max_size=len(held))
    )
    ranks, lineage = providers(held, lineages)
    newest = max(held)
    assert ranks and all(held[r] == newest for r in ranks)
    assert {lineages[r] for r in ranks} <= {lineage, FOLLOWS}
    at_newest = [lineages[r] for r, s in enumerate(held) if s == newest]
    if lineage != FOLLOWS:
        assert all(at_newest.count(lineage) >= at_newest.count(other) for other in set(at_newest) - {FOLLOWS})
    # every member decides alike, whatever the ranks' order
    order = data.draw(st.permutations(range(len(held))))
    again, lineage_again = providers([held[i] for i in order], [lineages[i] for i in order])
    assert lineage_again == lineage and sorted(order[r] for r in again) == ranks
