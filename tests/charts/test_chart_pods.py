"""What the chart gives the operator for the pods it builds: the sidecar image from values,
and the right to create the join Secret."""

from __future__ import annotations

import yaml

from chaos_operator.domain.builders import SIDECAR_IMAGE


def _operator_env(objects: list[dict]) -> dict[str, str]:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def test_the_sidecar_image_value_reaches_the_operator(render_chart) -> None:
    assert _operator_env(render_chart())["CHAOS_SIDECAR_IMAGE"] == SIDECAR_IMAGE  # the default matches
    values = {"sidecar": {"image": {"repository": "registry.example/chaos/sidecar", "tag": "9.9"}}}
    assert _operator_env(render_chart(values))["CHAOS_SIDECAR_IMAGE"] == "registry.example/chaos/sidecar:9.9"


def test_the_operator_may_create_the_join_secret_but_not_list_or_change_secrets(render_chart) -> None:
    role = next(o for o in render_chart() if o["kind"] in ("ClusterRole", "Role"))
    verbs = {v for r in role["rules"] if "secrets" in r["resources"] for v in r["verbs"]}
    assert verbs == {"get", "create"}, yaml.safe_dump(role["rules"])
