"""``chaos-train party keygen --party NAME --out FILE``: a party's key pair for a multi-party job."""

from __future__ import annotations

import argparse
import os
import secrets

from chaos_sidecar.cliutil import Subparsers
from chaos_sidecar.errors import InputError


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "party",
        help="a party's identity in a multi-party job (see docs/federation.md)",
        description="Manage a party's identity in a multi-party job.",
    )
    actions = parser.add_subparsers(dest="party_command", required=True, metavar="ACTION")
    keygen = actions.add_parser(
        "keygen",
        help="make a party key pair: the private key into --out, the public key on stdout",
        description="Make an Ed25519 key pair for a party. The private key goes into --out (mode "
        "0600, never overwritten): every node of the party needs it (--party-key). The public key "
        "is printed for the job's admission policy.",
    )
    keygen.add_argument("--party", required=True, help="the party's name in the admission policy")
    keygen.add_argument("--out", required=True, help="the private key file to create")
    keygen.set_defaults(run=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    from chaos_sidecar.parties import new_key_file  # cryptography: only when a key is made

    signer, raw = new_key_file(args.party, secrets.token_bytes(32))
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError("--out", f"{args.out} exists: a key file is never overwritten") from None
    except OSError as exc:
        raise InputError("--out", f"cannot create {args.out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    print(f"# party {signer.party}: private key in {args.out}; for the admission policy:")
    print(f"- public_key: {signer.public_key}")
    return 0
