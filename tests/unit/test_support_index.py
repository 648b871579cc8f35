"""The support index counts incrementally what the machine used to count from scratch."""

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos_sidecar.membership.support import SupportIndex, support_from_scratch

NODES = [f"n{i}" for i in range(6)]
hears_sets = st.frozensets(st.sampled_from(NODES))
# one operation: a report arrives (count), a sync with a whole map, or a query among some members
operations = st.lists(
    st.one_of(
        st.tuples(st.just("count"), st.sampled_from(NODES), hears_sets),
        st.tuples(st.just("sync"), st.dictionaries(st.sampled_from(NODES), hears_sets)),
        st.tuples(st.just("copy")),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.frozensets(st.sampled_from(NODES), min_size=1))
def test_index_after_any_operations_and_a_sync_counts_like_from_scratch(ops, members):
    index = SupportIndex()
    for op in ops:
        if op[0] == "count":
            index.count(op[1], op[2])
        elif op[0] == "sync":
            index.sync(op[1])
        else:
            index = index.copy()
    final = {n: frozenset(NODES[: i + 1]) for i, n in enumerate(NODES[:4])}
    index.sync(final)
    assert index.support(members) == support_from_scratch(final, members)
    assert index.support(sorted(members)) == support_from_scratch(final, members)


def test_a_copy_is_independent_of_the_original():
    index = SupportIndex()
    index.sync({"a": frozenset({"a", "b"})})
    other = index.copy()
    other.sync({"a": frozenset({"a"}), "c": frozenset({"b"})})
    assert index.support({"a", "b", "c"}) == {"a": 1, "b": 2, "c": 1}
    assert other.support({"a", "b", "c"}) == {"a": 1, "b": 2, "c": 1}


def test_reporters_outside_the_members_are_not_counted():
    index = SupportIndex()
    heard = {"a": frozenset({"b"}), "x": frozenset({"b", "a"})}
    index.sync(heard)
    assert index.support(["a", "b"]) == {"a": 1, "b": 2}
    assert index.support(["a", "b", "x"]) == {"a": 2, "b": 3, "x": 1}


def test_missing_is_remembered_per_key_while_the_set_and_view_are_the_same_objects():
    index = SupportIndex()
    view = ("a", "b", "c")
    hears = frozenset({"a"})
    first = index.missing(view, "k", hears)
    assert first == {"b", "c"}
    assert index.missing(view, "k", hears) is first
    assert index.missing(view, "k", frozenset({"a", "b"})) == {"c"}
    assert index.missing(("a", "b", "c", "d"), "k", frozenset({"a", "b"})) == {"c", "d"}


def test_canonical_hands_back_an_equal_set_already_held():
    index = SupportIndex()
    first = frozenset({"a", "b"})
    assert index.canonical(first) is first
    again = frozenset(["b", "a"])
    assert index.canonical(again) is first
    other = frozenset({"a"})
    assert index.canonical(other) is other
    assert index.copy().canonical(frozenset({"a", "b"})) is first


def test_ordered_is_sorted_whatever_was_asked_before():
    index = SupportIndex()
    for members in ({"b", "a"}, frozenset({"c", "a"}), {"a", "b"}, set(), {"z", "y", "x"}, {"b", "a"}):
        assert index.ordered(members) == tuple(sorted(members))


def test_lacking_lists_what_missing_would_say_where_it_is_not_empty():
    index, view = SupportIndex(), ("a", "b", "c")
    full, short = frozenset(view), frozenset({"a"})
    sets = [("a", full), ("b", short), ("c", frozenset({"a", "b", "c", "x"}))]
    assert index.lacking(view, "direct", sets) == [("b", frozenset({"b", "c"}))]
    assert index.missing(view, ("direct", "b"), short) == {"b", "c"}
    assert index.lacking(view, "direct", [("b", full)]) == []
