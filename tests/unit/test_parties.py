"""Parties of a multi-party job: the admission policy file, party signatures on requests and
relay seals (key windows, rotation, node ownership), and the admission decisions."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos_sidecar import parties
from chaos_sidecar.adapters.runtime import EventLog, MembershipRuntime
from chaos_sidecar.config import read_party_files, with_parties
from chaos_sidecar.errors import InputError
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.parties import PartySigner, new_key_file, parse_key_file, parse_policy
from chaos_sidecar.protocol import Message, Relay, View, ViewRequest, encode
from chaos_sidecar.protocol.messages import Join, Leave
from chaos_sidecar.security import (
    PARTY_HEADER,
    PARTY_SIGNATURE_HEADER,
    RotatingSecret,
    Verifier,
    relay_seal,
    signed_headers,
)

SECRET = b"parties-test-secret-0123456789"
A_OLD, A_NEW, B_KEY, C_KEY = (PartySigner(p, bytes([i]) * 32) for i, p in enumerate("aabc", 1))
DAY = 86_400.0
NOW = time.time()


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def policy_doc() -> dict:
    """Party a (nodes a-*, 3 at most) rotating from its old key to its new one (one day of
    overlap around now), party b (nodes b0, b1, 2 at most)."""
    return {
        "version": 1,
        "parties": [
            {
                "name": "a",
                "nodes": {"prefix": "a-"},
                "max_nodes": 3,
                "keys": [
                    {"public_key": A_OLD.public_key, "not_after": stamp(NOW + DAY)},
                    {"public_key": A_NEW.public_key, "not_before": stamp(NOW - DAY)},
                ],
            },
            {
                "name": "b",
                "nodes": {"ids": ["b0", "b1", "b2"]},
                "max_nodes": 2,
                "keys": [{"public_key": B_KEY.public_key}],
            },
        ],
    }


POLICY = parse_policy(yaml.safe_dump(policy_doc()).encode())


def credentials(signer: PartySigner | None, policy: parties.Policy | None = POLICY) -> RotatingSecret:
    secret = RotatingSecret(SECRET)
    secret.party, secret.policy = signer, policy
    return secret


# --- the policy file ------------------------------------------------------------------------


def test_a_policy_parses_from_yaml_and_json_alike() -> None:
    assert parse_policy(json.dumps(policy_doc()).encode()) == POLICY
    assert [p.name for p in POLICY.parties] == ["a", "b"]
    assert POLICY.owner("a-7").name == "a" and POLICY.owner("b1").name == "b"  # type: ignore[union-attr]
    assert POLICY.owner("b3") is None and POLICY.owner("c0") is None


def _set(path: str, value: object):
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node: object = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            del node[last]  # type: ignore[attr-defined]
        else:
            node[last] = value  # type: ignore[index]

    return mutate


DELETE = object()
BAD_POLICIES = [
    (_set("version", 2), "policy.version"),
    (_set("parties", []), "policy.parties"),
    (_set("parties.0.name", "A!"), "policy.parties[0].name"),
    (_set("parties.1.name", "a"), "policy.parties[1].name"),
    (_set("parties.0.max_nodes", 0), "policy.parties[0].max_nodes"),
    (_set("parties.0.max_nodes", True), "policy.parties[0].max_nodes"),
    (_set("parties.0.keys", []), "policy.parties[0].keys"),
    (_set("parties.0.keys.0.public_key", "not base64!"), "policy.parties[0].keys[0].public_key"),
    (_set("parties.0.keys.0.public_key", "AAAA"), "policy.parties[0].keys[0].public_key"),
    (_set("parties.0.keys.0.not_after", "tomorrow"), "policy.parties[0].keys[0].not_after"),
    (_set("parties.0.keys.0.not_after", "2027-01-01T00:00:00"), "policy.parties[0].keys[0].not_after"),
    (_set("parties.0.keys.0.not_before", stamp(NOW + 400 * DAY)), "policy.parties[0].keys[0].not_after"),
    (_set("parties.0.keys.0.expires", "x"), "policy.parties[0].keys[0].expires"),
    (_set("parties.0.nodes", {"prefix": "a-", "ids": ["a-0"]}), "policy.parties[0].nodes"),
    (_set("parties.0.nodes", {"prefix": ""}), "policy.parties[0].nodes.prefix"),
    (_set("parties.1.nodes", {"ids": ["b0", "a-1"]}), "policy.parties[1].nodes"),  # a's id
    (_set("parties.1.nodes", {"prefix": "a-x"}), "policy.parties[1].nodes"),  # inside a's prefix
    (_set("parties.1.nodes", {"ids": ["bad id"]}), "policy.parties[1].nodes.ids[0]"),
    (_set("parties.1.max_nodes", DELETE), "policy.parties[1].max_nodes"),
]


@pytest.mark.parametrize(("mutate", "field"), BAD_POLICIES)
def test_a_bad_policy_is_refused_naming_the_field(mutate, field: str) -> None:
    doc = copy.deepcopy(policy_doc())
    mutate(doc)
    with pytest.raises(InputError) as caught:
        parse_policy(yaml.safe_dump(doc).encode())
    assert caught.value.field == field


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b"{version: 1, parties: [", b"x" * (300 * 1024)])
def test_a_policy_that_does_not_parse_is_refused(raw: bytes) -> None:
    with pytest.raises(InputError) as caught:
        parse_policy(raw)
    assert caught.value.field == "policy"


def test_a_key_file_round_trips_and_a_bad_one_names_the_field() -> None:
    signer, raw = new_key_file("b", bytes(range(32)))
    again = parse_key_file(raw, "--party-key")
    assert (again.party, again.public_key) == ("b", signer.public_key)
    assert again.sign(b"x") == signer.sign(b"x")
    data = json.loads(raw)
    for key, value, field in [
        ("party", "B B", "--party-key.party"),
        ("private_key", "AAAA", "--party-key.private_key"),
        ("version", 9, "--party-key.version"),
    ]:
        with pytest.raises(InputError) as caught:
            parse_key_file(json.dumps({**data, key: value}).encode(), "--party-key")
        assert caught.value.field == field
    with pytest.raises(InputError) as caught:
        parse_key_file(b"-----BEGIN", "--party-key")
    assert caught.value.field == "--party-key"


def test_the_sidecar_refuses_a_key_that_does_not_fit_the_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_doc()))
    keys = {}
    for name, seed in [("b", bytes([3]) * 32), ("b-unlisted", bytes([9]) * 32), ("c", bytes([4]) * 32)]:
        keys[name] = tmp_path / name
        keys[name].write_bytes(new_key_file(name.split("-")[0], seed)[1])
    signer, loaded = read_party_files(str(keys["b"]), str(policy), "b1")  # type: ignore[misc]
    assert signer.party == "b" and loaded == POLICY
    cases = [
        ((str(keys["b"]), None, "b1"), "--admission-policy"),
        ((None, str(policy), "b1"), "--party-key"),
        ((str(keys["c"]), str(policy), "c0"), "--party-key"),  # party not in the policy
        ((str(keys["b-unlisted"]), str(policy), "b1"), "--party-key"),  # key not listed for b
        ((str(keys["b"]), str(policy), "a-1"), "--node-id"),  # a node id of party a
        ((str(tmp_path / "missing"), str(policy), "b1"), "--party-key"),
    ]
    for args, field in cases:
        with pytest.raises(InputError) as caught:
            read_party_files(*args)
        assert caught.value.field == field, args
    assert read_party_files(None, None, "b1") is None


# --- party signatures -----------------------------------------------------------------------


def headers_from(signer: PartySigner | None, node: str, now_ns: int | None = None) -> dict[str, str]:
    now_ns = now_ns or time.time_ns()
    return signed_headers(credentials(signer), "GET", "/v1/stream", b"", now_ns, node)


def check(headers: dict[str, str], now_s: float = NOW, policy: parties.Policy | None = POLICY) -> str | None:
    verifier = Verifier(SECRET, window_s=1e12, policy=policy)  # the window is tested elsewhere
    return verifier.check("GET", "/v1/stream", b"", headers, int(now_s * 1e9))


def test_a_party_signed_request_is_accepted_and_every_defect_refused_by_reason() -> None:
    assert check(headers_from(B_KEY, "b0")) is None
    assert check(headers_from(A_NEW, "a-0")) is None
    assert check(headers_from(B_KEY, "a-0")) == parties.FOREIGN_NODE  # b claims one of a's ids
    assert check(headers_from(B_KEY, "b9")) == parties.FOREIGN_NODE  # not in b's list
    assert check(headers_from(C_KEY, "c0")) == parties.UNKNOWN
    assert check(headers_from(None, "b0")) == parties.UNAUTHENTICATED  # join secret only
    other = headers_from(B_KEY, "b1")[PARTY_SIGNATURE_HEADER]  # b's, over another request
    forged = {**headers_from(B_KEY, "b0"), PARTY_SIGNATURE_HEADER: other}
    assert check(forged) == parties.BAD_SIGNATURE
    claimed = {**headers_from(B_KEY, "a-0"), PARTY_HEADER: "a"}  # b's signature under a's name
    assert check(claimed) == parties.BAD_SIGNATURE
    assert check({**headers_from(B_KEY, "b0"), PARTY_SIGNATURE_HEADER: "x"}) == parties.BAD_SIGNATURE


def test_keys_rotate_old_and_new_valid_in_the_overlap_and_each_refused_outside_its_window() -> None:
    for signer in (A_OLD, A_NEW):
        assert check(headers_from(signer, "a-1"), now_s=NOW) is None
    later = NOW + 2 * DAY  # the old key's window is over
    assert check(headers_from(A_OLD, "a-1"), now_s=later) == parties.BAD_SIGNATURE
    assert check(headers_from(A_NEW, "a-1"), now_s=later) is None
    earlier = NOW - 2 * DAY  # before the new key's window
    assert check(headers_from(A_NEW, "a-1"), now_s=earlier) == parties.BAD_SIGNATURE
    only_old = parse_policy(yaml.safe_dump({**policy_doc(), "parties": policy_doc()["parties"][:1]}).encode())
    retired = parties.Policy((parties.Party("a", only_old.parties[0].keys[:1], 3, prefix="a-"),))
    assert check(headers_from(A_OLD, "a-1"), now_s=later, policy=retired) == parties.KEY_EXPIRED
    future = parties.Policy((parties.Party("a", only_old.parties[0].keys[1:], 3, prefix="a-"),))
    assert check(headers_from(A_NEW, "a-1"), now_s=earlier, policy=future) == parties.KEY_NOT_YET_VALID


def test_without_a_policy_requests_are_signed_and_checked_as_before() -> None:
    plain = signed_headers(SECRET, "GET", "/v1/stream", b"", time.time_ns(), "n0")
    assert PARTY_HEADER not in plain
    assert Verifier(SECRET).check("GET", "/v1/stream", b"", plain, time.time_ns()) is None
    # a policy-less member ignores party headers it does not need
    assert Verifier(SECRET).check("GET", "/v1/stream", b"", headers_from(B_KEY, "b0"), time.time_ns()) is None


# --- relay seals and admission in the runtime --------------------------------------------------

VIEW = View(1, ("a-0", "a-1", "b0"), "a-0", ("a-0", "a-1", "b0"))


def runtime(node: str, signer: PartySigner, rejected: list[str], clock=time.monotonic) -> MembershipRuntime:
    state = sm.initial_member(node, VIEW, sm.Settings(), clock())
    secret = with_parties(RotatingSecret(SECRET), (signer, POLICY))
    return MembershipRuntime(
        state, secret, EventLog(None, node), SidecarMetrics(), clock=clock, on_reject=rejected.append
    )


async def test_a_relay_seal_carries_the_origins_party() -> None:
    rejected: list[str] = []
    a1 = runtime("a-1", A_NEW, rejected)
    inner = Message("b0", 1, ViewRequest())
    now = time.time_ns()

    def relayed(seal: str) -> bytes:
        return encode(Message("a-0", 1, Relay("a-1", inner, seal)))

    b_seal = relay_seal(credentials(B_KEY), "b0", "a-1", encode(inner), now)
    assert b_seal.count(".") == 3 and len(b_seal) <= 256  # fits the wire format's bound
    assert await a1.receive(relayed(b_seal), authenticated_as="a-0") is None
    unsigned = relay_seal(SECRET, "b0", "a-1", encode(inner), now + 1)
    assert await a1.receive(relayed(unsigned), authenticated_as="a-0") == f"relay_{parties.UNAUTHENTICATED}"
    by_a = relay_seal(credentials(A_NEW), "b0", "a-1", encode(inner), now + 2)  # a signs for b0
    assert await a1.receive(relayed(by_a), authenticated_as="a-0") == f"relay_{parties.FOREIGN_NODE}"
    assert rejected == [f"relay_{parties.UNAUTHENTICATED}", f"relay_{parties.FOREIGN_NODE}"]


async def test_joins_past_a_partys_limit_and_foreign_leaves_are_refused_and_counted() -> None:
    rejected: list[str] = []
    a0 = runtime("a-0", A_NEW, rejected)  # the coordinator
    assert await a0.receive(encode(Message("b1", 0, Join("b1", "http://b1"))), authenticated_as="b1") is None
    assert "b1" in a0.state.joins  # b holds b0 and now b1 pending: its 2
    full = encode(Message("b2", 0, Join("b2", "http://b2")))
    assert await a0.receive(full, authenticated_as="b2") == parties.FULL
    forwarded = encode(Message("b0", 1, Join("c0", "http://c0")))  # a member forwards an outsider
    assert await a0.receive(forwarded, authenticated_as="b0") == parties.UNKNOWN
    foreign = encode(Message("b0", 1, Leave("a-1")))
    assert await a0.receive(foreign, authenticated_as="b0") == parties.FOREIGN_LEAVE
    assert "a-1" not in a0.state.leaves
    own = encode(Message("b0", 1, Leave("b0")))
    assert await a0.receive(own, authenticated_as="b0") is None
    assert "b0" in a0.state.leaves
    assert rejected == [parties.FULL, parties.UNKNOWN, parties.FOREIGN_LEAVE]
    assert "b2" not in a0.state.joins and "c0" not in a0.state.joins


async def test_a_joiner_that_stopped_asking_no_longer_holds_its_partys_place() -> None:
    now = [1000.0]
    rejected: list[str] = []
    a0 = runtime("a-0", A_NEW, rejected, clock=lambda: now[0])
    assert await a0.receive(encode(Message("b1", 0, Join("b1", "http://b1"))), authenticated_as="b1") is None
    b2 = encode(Message("b2", 0, Join("b2", "http://b2")))
    assert await a0.receive(b2, authenticated_as="b2") == parties.FULL  # b0 and b1 asking: b's 2
    now[0] += 2 * a0.state.settings.retry_interval + 0.01  # b1 went silent (it retries every interval)
    assert await a0.receive(b2, authenticated_as="b2") is None
    assert "b2" in a0.state.joins


# --- the admission decision, as a property -----------------------------------------------------

NODES = ["a-0", "a-1", "a-2", "a-3", "a-4", "b0", "b1", "b2", "c0", "c1"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(NODES), max_size=30), st.sets(st.sampled_from(NODES), max_size=4))
def test_admitting_joins_one_by_one_never_exceeds_a_partys_limit(
    attempts: list[str], members: set[str]
) -> None:
    """Whatever order joins come in, and whatever the group already holds (a group may hold
    more than a limit when the policy was tightened): each admitted join leaves its party
    within its limit, each refused one names why truthfully, and rejoins take no new place."""
    group = frozenset(n for n in members if POLICY.owner(n) is not None)
    admitted: set[str] = set()
    for node in attempts:
        reason = parties.admit_join(POLICY, node, group, frozenset(admitted))
        party = POLICY.owner(node)
        held = len({n for n in group | admitted if party is not None and party.owns(n)} - {node})
        if party is None:
            assert reason == parties.UNKNOWN
        elif node in group:
            assert reason is None
        elif reason is None:
            admitted.add(node)
            assert held + 1 <= party.max_nodes
        else:
            assert reason == parties.FULL and held >= party.max_nodes
    for party in POLICY.parties:
        new = {n for n in admitted if party.owns(n) and n not in group}
        assert not new or len({n for n in group | admitted if party.owns(n)}) <= party.max_nodes


# --- the commands -----------------------------------------------------------------------------


def test_keygen_writes_a_private_key_file_once_and_prints_the_public_key(tmp_path: Path, capsys) -> None:
    from chaos_sidecar import cli

    out = tmp_path / "b.key"
    args = cli.parse(["party", "keygen", "--party", "b", "--out", str(out)])
    assert args.run(args) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    signer = parse_key_file(out.read_bytes(), "--party-key")
    assert signer.party == "b"
    printed = capsys.readouterr().out
    assert f"- public_key: {signer.public_key}" in printed
    assert parse_policy(  # what it printed goes into a policy as it is
        yaml.safe_dump(
            {"version": 1, "parties": [{"name": "b", "nodes": {"prefix": "b"}, "max_nodes": 1, "keys": []}]}
        )
        .replace("keys: []", "keys:\n  " + printed.splitlines()[1])
        .encode()
    ).parties[0].keys[0].public == parties.decode_key(signer.public_key, "k", 32)
    with pytest.raises(InputError) as caught:  # never overwritten
        args.run(args)
    assert (
        caught.value.field == "--out"
        and parse_key_file(out.read_bytes(), "k").public_key == signer.public_key
    )
    bad = cli.parse(["party", "keygen", "--party", "Bad Name", "--out", str(tmp_path / "x")])
    with pytest.raises(InputError) as caught:
        bad.run(bad)
    assert caught.value.field == "--party" and not (tmp_path / "x").exists()


def test_the_sidecar_command_takes_the_party_options(tmp_path: Path) -> None:
    from chaos_sidecar import cli
    from chaos_sidecar.commands.sidecar import config_from_args

    secret, key, policy = tmp_path / "secret", tmp_path / "b.key", tmp_path / "policy.yaml"
    secret.write_bytes(SECRET)
    key.write_bytes(new_key_file("b", bytes([3]) * 32)[1])
    policy.write_text(yaml.safe_dump(policy_doc()))
    argv = ["sidecar", "--node-id", "b1", "--peers", "a-0=http://127.0.0.1:1", "--secret-file", str(secret),
            "--party-key", str(key), "--admission-policy", str(policy)]  # fmt: skip
    config = config_from_args(cli.parse(argv))  # several parties: protected collectives by default
    assert config.secret.party.party == "b" and config.secret.policy == POLICY  # type: ignore[attr-defined]
    assert not config.cleartext_collectives
    assert config_from_args(cli.parse([*argv, "--allow-cleartext-collectives"])).cleartext_collectives
    plain = config_from_args(cli.parse(argv[:-4]))
    assert plain.secret.party is None and plain.secret.policy is None  # type: ignore[attr-defined]


def test_run_join_needs_the_party_key_and_policy_and_checks_them_before_starting(tmp_path: Path) -> None:
    from chaos_sidecar import cli

    script, secret, key = tmp_path / "train.py", tmp_path / "secret", tmp_path / "b.key"
    script.write_text("raise SystemExit('never started')\n")
    secret.write_bytes(SECRET)
    key.write_bytes(new_key_file("b", bytes([3]) * 32)[1])
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy_doc()))
    join = [
        "run",
        "--join",
        "a-0=https://site-a.example:7070",
        "--node-id",
        "b0",
        "--secret-file",
        str(secret),
    ]
    cases = [
        ([], "--party-key"),
        (["--party-key", str(key)], "--admission-policy"),
        (["--party-key", str(key), "--admission-policy", str(tmp_path / "nope.yaml")], "--admission-policy"),
    ]
    for extra, field in cases:
        args = cli.parse([*join, *extra, str(script)])
        with pytest.raises(InputError) as caught:
            args.run(args)
        assert caught.value.field == field, extra
    with pytest.raises(InputError) as caught:
        bad = cli.parse(["run", "--join", "https://site-a.example:7070", str(script)])  # no id=
        bad.run(bad)
    assert caught.value.field == "--join[0]"
