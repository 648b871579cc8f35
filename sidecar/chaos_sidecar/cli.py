"""The ``chaos-train`` command line.

Each sub-command's module declares its own parser (``register(subparsers)``) and sets the
function that runs it. The product's commands are listed here; other commands are plugins
found through the ``chaos_train.commands`` entry-point group (the lab declares ``local``,
``bench`` and ``sim`` there). A plugin whose module is not installed, as in the images, is
simply absent. Command modules keep heavy imports inside ``run``, so building the parser
stays cheap: ``chaos-train plan`` never loads kopf and ``chaos-train operator`` never loads
torch.

A command that parses in two stages (``bench``: the scenario decides the options) sets
``parse_rest``; it receives what the first stage did not recognise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

from chaos_sidecar import __version__
from chaos_sidecar.cliutil import Subparsers
from chaos_sidecar.commands import operator, party, plan, run, sidecar
from chaos_sidecar.errors import ChaosError

PLUGIN_GROUP = "chaos_train.commands"
PRODUCT_COMMANDS = (sidecar, run, operator, plan, party)


def _missing(entry_point: EntryPoint, exc: ModuleNotFoundError) -> bool:
    """True when the plugin's own module (or a package above it) is what is not installed;
    a missing dependency inside an installed plugin is a real error and is raised."""
    return exc.name is not None and (
        entry_point.module == exc.name or entry_point.module.startswith(exc.name + ".")
    )


def plugin_registrars() -> list[Callable[[Subparsers], None]]:
    """The ``register`` functions of the installed plugin commands, by command name."""
    found = {}
    for entry_point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            found[entry_point.name] = entry_point.load()
        except ModuleNotFoundError as exc:
            if not _missing(entry_point, exc):
                raise
    return list(found.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaos-train",
        description="Elastic, self-healing data-parallel training: sidecar, operator and planner "
        "(and, where the lab is installed, the local job, simulator and benchmarks).",
    )
    parser.add_argument("--version", action="version", version=f"chaos-train {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in PRODUCT_COMMANDS:
        module.register(subparsers)
    for register in plugin_registrars():
        register(subparsers)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    parse_rest = getattr(args, "parse_rest", None)
    if parse_rest is not None:
        return parse_rest(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return args.run(args)
    except ChaosError as exc:
        print(f"chaos-train {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
