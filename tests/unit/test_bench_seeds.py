import pytest

from chaos_lab.benchmarks.seeds import join_sources, seed_range
from chaos_sidecar.errors import InputError


def test_seed_range_is_inclusive_and_refuses_bad_text():
    assert seed_range("3-5") == [3, 4, 5]
    assert seed_range("7") == [7]
    for bad in ("0-2", "5-3", "a-b", ""):
        with pytest.raises(InputError, match="--seeds"):
            seed_range(bad)


def test_join_sources_counts_senders_and_the_top_sender_of_each_join():
    runs = [
        {"events": [
            {"kind": "join", "bytes_per_source": {"n0": 6, "n1": 2, "n3": 0}},
            {"kind": "crash", "bytes_per_source": {}},
        ]},
        {"events": [{"kind": "join", "bytes_per_source": {"n0": 1, "n1": 3, "n2": 1, "n3": 1}}]},
        {"ok": False, "error": "did not finish"},
    ]  # fmt: skip
    assert join_sources(runs) == {
        "joins": 2,
        "senders_per_join": {"2": 1, "4": 1},
        "top_sender_per_join": {"n0": 1, "n1": 1},
    }
