"""One rank of a cross-party group, for tests/integration/test_cross_party.py: it meets the
others in a TCPStore, builds its CrossPartyGroup (chaos_train.crossparty.open_cross_party),
all-reduces its tensors and writes what it got (or the error) to a JSON file.

argv: STORE_PORT RANK PARTIES(comma) KEY_HEX SIZE OUT [clear]
Rank 0 contributes the test's recognisable pattern and rank 1 zeros (party A's partial sum
is the pattern, bit for bit), the others seeded random numbers. With
``clear`` the channel's cipher is replaced by one that does not encrypt: the control that
shows the test's check on the wire would see a tensor sent in clear.
"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

from chaos_train import sealed
from chaos_train.crossparty import open_cross_party
from chaos_train.groups import all_gather_ints, new_process_group

TIMEOUT_S = 30.0


def pattern(size: int) -> torch.Tensor:
    return torch.arange(size, dtype=torch.float32) * 1.25 + 1000.0


def contribution(rank: int, size: int) -> torch.Tensor:
    if rank == 0:
        return pattern(size)
    if rank == 1:
        return torch.zeros(size)
    return torch.randn(size, generator=torch.Generator().manual_seed(rank))


class NoCipher:
    """The control's 'cipher': the payload as it is, and a tag of zeros."""

    def __init__(self, key: bytes) -> None:
        pass

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return bytes(data) + bytes(sealed.TAG_BYTES)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return bytes(data[: -sealed.TAG_BYTES])


def main() -> None:
    port, rank, parties, key, size, out = sys.argv[1:7]
    if sys.argv[7:] == ["clear"]:
        sealed.AESGCM = NoCipher  # type: ignore[misc,assignment]
    rank_i, size_i = int(rank), int(size)
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", int(port), None, False, timeout)
    names = parties.split(",")

    def local(st: dist.Store, r: int, n: int) -> dist.ProcessGroup:
        return new_process_group("gloo", st, r, n, TIMEOUT_S, "127.0.0.1")

    result: dict[str, object] = {}
    try:
        group = open_cross_party(
            dist.PrefixStore("group", store), rank_i, names, [bytes.fromhex(key)], "127.0.0.1",
            b"test context", TIMEOUT_S, local,
        )  # fmt: skip
        tensor = contribution(rank_i, size_i)
        group.allreduce([tensor]).wait(timeout)
        result["sum"] = tensor.numpy().tobytes().hex()
        result["gathered"] = all_gather_ints(group, [rank_i, 10 * rank_i])
        group.barrier().wait(timeout)
    except RuntimeError as exc:
        result["error"] = str(exc)
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
