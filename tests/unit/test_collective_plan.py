"""The local API's collective plan (how a view's collectives cross parties) and the job's
collective keys the trainer's cross-party channels derive theirs from."""

from __future__ import annotations

import datetime
import threading
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from chaos_sidecar.errors import InputError
from chaos_sidecar.protocol.local_api import CollectivePlan
from chaos_sidecar.security import RotatingSecret, collective_keys
from chaos_train.regroup import Regrouping

SECRET = b"a-shared-join-secret-of-the-job"


def test_a_plan_round_trips_and_bad_ones_are_refused_by_field() -> None:
    for plan in [
        CollectivePlan(None),
        CollectivePlan(("a", "a", "b"), keys=(bytes(32), bytes([1]) * 32)),
        CollectivePlan(("a", "b"), cleartext=True),
    ]:
        assert CollectivePlan.from_json(plan.to_json()) == plan
    bad = [
        ([], "collective"),
        ({"parties": "a,b"}, "parties"),
        ({"parties": None, "cleartext": "yes"}, "cleartext"),
        ({"parties": None, "keys": ["00"]}, "keys"),
        ({"parties": None, "keys": ["zz" * 32]}, "keys"),
        ({"parties": ["a", "b"], "keys": []}, "keys"),  # protected, and nothing to protect it with
    ]
    for payload, field in bad:
        with pytest.raises(InputError) as caught:
            CollectivePlan.from_json(payload)
        assert caught.value.field == field, payload


def test_collective_keys_are_one_way_one_per_accepted_secret_the_signing_one_first() -> None:
    (key,) = collective_keys(SECRET, 0)
    assert len(key) == 32 and key != SECRET[:32] and SECRET not in key
    assert collective_keys(SECRET, 0) == [key]  # every member derives the same
    rotating = RotatingSecret(SECRET, grace_s=10.0)
    assert rotating.offer(b"the-next-join-secret-of-the-job", now_ns=0) == "accepted"
    keys = collective_keys(rotating, 0)
    assert keys[0] == key and len(keys) == 2 and keys[1] != key


def test_members_started_with_and_without_cleartext_collectives_refuse_to_build_a_group() -> None:
    """One node with --allow-cleartext-collectives among nodes without it would wait in a flat
    group the others never build: each member says which kind it builds, and all check."""

    def agree(kinds: dict[str, str]) -> dict[str, str | None]:
        store = dist.HashStore()
        store.set_timeout(datetime.timedelta(seconds=10))
        errors: dict[str, str | None] = {}

        def member(node: str) -> None:
            engine = SimpleNamespace(cfg=SimpleNamespace(node_id=node))
            try:
                Regrouping._agree_on_collectives(engine, store, list(kinds), kinds[node])  # type: ignore[arg-type]
                errors[node] = None
            except RuntimeError as exc:
                errors[node] = str(exc)

        threads = [threading.Thread(target=member, args=(n,)) for n in kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        return errors

    assert agree({"a-0": "sealed", "b0": "sealed"}) == {"a-0": None, "b0": None}
    errors = agree({"a-0": "sealed", "b0": "cleartext"})
    assert "not on ['b0']" in str(errors["a-0"]) and "not on ['a-0']" in str(errors["b0"])
    assert "--allow-cleartext-collectives" in str(errors["a-0"])
