"""Sites: which joiners pull over the WAN and which through a neighbour (chaos_train.sites),
and how a node names its site (CHAOS_SITE, checked)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos_sidecar import trainer_env
from chaos_sidecar.errors import InputError
from chaos_train.sites import relays

BASE_ENV = {
    trainer_env.SIDECAR_URL: "http://127.0.0.1:1",
    trainer_env.NODE_ID: "n",
    trainer_env.SNAPSHOT_DIR: "/s",
}


def test_a_site_without_the_state_pulls_over_the_wan_once_and_shares_it() -> None:
    site_of = {"a-0": "a", "a-1": "a", "b0": "b", "b1": "b", "b2": "b"}
    assert relays(["a-0", "a-1"], ["b2", "b0", "b1"], site_of) == {"b1": "b0", "b2": "b0"}


def test_a_site_holding_the_state_or_with_one_joiner_pulls_directly() -> None:
    site_of = {"a-0": "a", "a-1": "a", "a-2": "a", "b0": "b", "c0": "c"}
    assert relays(["a-0", "b0"], ["a-1", "a-2", "c0"], site_of) == {}
    assert relays(["a-0"], ["a-1", "a-2"], site_of) == {}  # one site: no WAN to spare


def test_a_joiner_of_unknown_site_pulls_directly() -> None:
    assert relays(["a-0"], ["x", "y"], {"a-0": "a"}) == {}


names = st.sampled_from([f"n{i}" for i in range(12)])


@given(
    nodes=st.lists(names, min_size=1, max_size=12, unique=True),
    sites=st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=12, max_size=12),
    split=st.integers(min_value=1, max_value=11),
)
def test_relays_only_chain_joiners_of_one_site_to_a_direct_puller(nodes, sites, split) -> None:
    providers, pulling = nodes[:split], nodes[split:]
    site_of = {f"n{i}": s for i, s in enumerate(sites)}
    out = relays(providers, pulling, site_of)
    holding = {site_of[p] for p in providers}
    for joiner, neighbour in out.items():
        assert joiner in pulling and neighbour in pulling and neighbour not in out  # one hop
        assert site_of[joiner] == site_of[neighbour] not in holding
        assert neighbour < joiner  # the site's first joiner pulls over the WAN
    for site in {site_of[n] for n in pulling} - holding:  # exactly one direct puller per such site
        direct = [n for n in pulling if site_of[n] == site and n not in out]
        assert len(direct) == 1
    assert relays(providers, list(reversed(pulling)), site_of) == out  # every member agrees


def test_chaos_site_is_read_and_checked() -> None:
    env = trainer_env.TrainerEnv.from_environ({**BASE_ENV, trainer_env.SITE: "lab-2.eu"})
    assert env is not None and env.site == "lab-2.eu"
    assert trainer_env.TrainerEnv.from_environ(env.to_environ()) == env
    for bad in ("Lab", "-x", "a b", "x" * 64):
        with pytest.raises(InputError) as info:
            trainer_env.TrainerEnv.from_environ({**BASE_ENV, trainer_env.SITE: bad})
        assert info.value.field == trainer_env.SITE
