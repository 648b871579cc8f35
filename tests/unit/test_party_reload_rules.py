"""What a changed party key file and policy must satisfy to replace the pair in force without a
restart (chaos_sidecar.parties.check_reload): each refusal names the option to fix."""

from __future__ import annotations

import math

import pytest

from chaos_sidecar.errors import InputError
from chaos_sidecar.parties import (
    KeyNotYetValid,
    Party,
    PartyKey,
    PartySigner,
    Policy,
    check_reload,
    decode_key,
)

OLD, NEW, OTHER_PARTY = (
    PartySigner("a", b"\x01" * 32),
    PartySigner("a", b"\x02" * 32),
    PartySigner("b", b"\x03" * 32),
)
NOW = 1_800_000_000.0


def key(signer: PartySigner, not_before: float = -math.inf, not_after: float = math.inf) -> PartyKey:
    return PartyKey(decode_key(signer.public_key, "k", 32), not_before, not_after)


def policy(*keys: PartyKey, b_keys: tuple[PartyKey, ...] = ()) -> Policy:
    parties = [Party("a", keys, 3, prefix="a-")]
    if b_keys:
        parties.append(Party("b", b_keys, 3, prefix="b-"))
    return Policy(tuple(parties))


def test_a_new_key_listed_and_valid_now_is_taken() -> None:
    check_reload(OLD, NEW, policy(key(OLD, not_after=NOW + 60), key(NEW, not_before=NOW - 60)), "a-1", NOW)


@pytest.mark.parametrize(
    ("signer", "in_force", "node", "field", "says"),
    [
        (NEW, policy(key(OLD)), "a-1", "--party-key", "is not listed for 'a'"),
        (NEW, policy(key(NEW)), "b-1", "--node-id", "'b-1' is not a node id that party 'a' owns"),
        (
            OTHER_PARTY,
            policy(key(OLD), b_keys=(key(OTHER_PARTY),)),
            "b-1",
            "--party-key",
            "changing party needs a restart",
        ),
        (NEW, policy(key(NEW, not_after=NOW - 1)), "a-1", "--party-key", "expired at 2027-01-15T07:59:59Z"),
    ],
)
def test_a_pair_that_does_not_fit_is_refused_naming_the_option(
    signer: PartySigner, in_force: Policy, node: str, field: str, says: str
) -> None:
    with pytest.raises(InputError) as refused:
        check_reload(OLD, signer, in_force, node, NOW)
    assert refused.value.field == field and says in refused.value.message, refused.value
    assert not isinstance(refused.value, KeyNotYetValid)


def test_a_key_whose_window_has_not_begun_is_refused_as_one_time_will_lift() -> None:
    with pytest.raises(KeyNotYetValid, match="not valid before 2027-01-15T08:01:00Z on this node's clock"):
        check_reload(OLD, NEW, policy(key(NEW, not_before=NOW + 60)), "a-1", NOW)
