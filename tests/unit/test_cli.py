"""The ``chaos-train`` command line: who declares which options, plugins, and every documented
invocation still parsing."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from chaos_lab.commands.bench import SCENARIOS
from chaos_sidecar import cli

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "Makefile",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "bench").rglob("*.md")),
]


def _exit_code_and_output(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_bench_scenario_help_lists_only_that_scenarios_options(capsys) -> None:
    code, text = _exit_code_and_output(capsys, ["bench", "--scenario", "transfer", "--help"])
    assert code == 0
    for option in ("--sources", "--state-mb", "--rates-mbps", "--kill-one", "--json", "--out"):
        assert option in text
    for other in ("--max-nodes", "--rounds", "--keep-logs", "--duration", "--links", "--plot"):
        assert other not in text


def test_bench_help_without_a_scenario_lists_the_scenarios(capsys) -> None:
    code, text = _exit_code_and_output(capsys, ["bench", "--help"])
    assert code == 0
    assert all(name in text for name in SCENARIOS)
    assert "--sources" not in text


def test_an_option_of_another_scenario_is_refused_naming_it(capsys) -> None:
    code, text = _exit_code_and_output(capsys, ["bench", "--scenario", "transfer", "--max-nodes", "3"])
    assert code == 2
    assert "--max-nodes" in text


def test_bench_needs_a_scenario(capsys) -> None:
    code, text = _exit_code_and_output(capsys, ["bench", "--json"])
    assert code == 2
    assert "--scenario" in text


def test_scenario_options_are_parsed_with_their_types() -> None:
    args = cli.parse(["bench", "--scenario", "join-modes", "--runs", "5", "--hidden", "2048", "--json"])
    assert (args.scenario, args.runs, args.hidden, args.steps, args.json, args.plot) == (
        "join-modes", 5, 2048, 300, True, None,
    )  # fmt: skip


def test_every_scenario_builds_its_parser() -> None:
    from chaos_lab.commands.bench import scenario_parser

    for name in SCENARIOS:
        scenario_parser(name, prog=f"chaos-train bench --scenario {name}").parse_args([])


# where each document writes a command: in backticks in Markdown, after $(BIN)/ in the Makefile
INVOCATION = {".md": r"`(chaos-train [^`]+)`", "": r"\$\(BIN\)/(chaos-train [^\n]+)"}
PLACEHOLDER = r"[\[\](){}|$]|\.\.\."  # optional parts, alternatives, shell variables, elisions


def documented_invocations() -> list[str]:
    """The ``chaos-train ...`` commands the docs and the Makefile give, less bare command names,
    those with placeholders (``--nodes N``, ``INSTANCE.json``, ``[--out DIR]``) and help requests."""
    found = []
    for path in DOCUMENTS:
        for command in re.findall(INVOCATION[path.suffix], path.read_text()):
            if re.search(PLACEHOLDER, command):
                continue
            words = shlex.split(command)
            if len(words) == 2:
                continue  # ``chaos-train sidecar`` in prose names a command, it does not run one
            if not any(re.fullmatch(r"[A-Z]+(\.[a-z]+)?|--help|--version", word) for word in words):
                found.append(command)
    return found


def test_the_docs_name_concrete_invocations() -> None:
    invocations = documented_invocations()
    assert any(c.startswith("chaos-train bench --scenario transfer") for c in invocations)
    assert any(c.startswith("chaos-train local") for c in invocations)


@pytest.mark.parametrize("command", documented_invocations())
def test_a_documented_invocation_still_parses(command: str) -> None:
    args = cli.parse(shlex.split(command)[1:])
    assert callable(args.run)


def _with_plugins(monkeypatch, *entry_points: EntryPoint) -> None:
    monkeypatch.setattr(cli, "entry_points", lambda group: list(entry_points))


def command_names(parser) -> list[str]:
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(subparsers.choices)


def test_product_and_lab_commands_are_registered() -> None:
    assert command_names(cli.build_parser()) == [
        "sidecar",
        "run",
        "operator",
        "plan",
        "party",
        "bench",
        "local",
        "sim",
    ]


def test_a_plugin_whose_module_is_not_installed_is_absent(monkeypatch) -> None:
    _with_plugins(
        monkeypatch,
        EntryPoint("ghost", "chaos_ghost.commands.ghost:register", cli.PLUGIN_GROUP),
        EntryPoint("sim", "chaos_lab.commands.sim:register", cli.PLUGIN_GROUP),
    )
    assert command_names(cli.build_parser()) == ["sidecar", "run", "operator", "plan", "party", "sim"]


def test_a_plugin_missing_a_dependency_is_an_error(monkeypatch, tmp_path) -> None:
    (tmp_path / "broken_plugin.py").write_text("import not_installed_dependency_of_a_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _with_plugins(monkeypatch, EntryPoint("broken", "broken_plugin:register", cli.PLUGIN_GROUP))
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_of_a_plugin"):
        cli.build_parser()
    sys.modules.pop("broken_plugin", None)


def test_building_the_parser_loads_no_heavy_framework() -> None:
    import subprocess

    probe = (
        "import sys; from chaos_sidecar.cli import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'kopf', 'kubernetes', 'torch', 'pulp', 'matplotlib', 'yaml'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_the_lab_the_product_commands_still_work() -> None:
    """As in the images: the entry points are declared but chaos_lab cannot be imported."""
    import subprocess

    probe = (
        "import sys; sys.modules['chaos_lab'] = None; "  # None in sys.modules: importing it fails
        "from chaos_sidecar import cli; print(cli.parse(['plan', 'x.json']).command); "
        "cli.main(['--help'])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plan\n")
    assert "sidecar" in result.stdout and "operator" in result.stdout
    assert not re.search(r"^\s+(bench|local|sim)\s", result.stdout, flags=re.MULTILINE)


def test_sidecar_state_dir_reaches_the_config(tmp_path: Path) -> None:
    from chaos_sidecar.commands.sidecar import config_from_args

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    base = ["sidecar", "--node-id", "n0", "--seed", "--secret-file", str(secret)]
    assert config_from_args(cli.parse(base)).state_dir is None  # in memory: every start a new incarnation
    config = config_from_args(cli.parse([*base, "--state-dir", str(tmp_path / "state")]))
    assert config.state_dir == tmp_path / "state"


def test_sim_writes_its_report_with_out(tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "results" / "sim.json"
    args = cli.parse(
        ["sim", "--nodes", "3", "--schedules", "2", "--faults", "none", "--json", "--out", f"{out}"]
    )
    assert args.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed and printed["schedules"] == 2 and printed["violations"] == 0
