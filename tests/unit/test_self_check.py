"""The advertised-address self-check's verdict and its line (chaos_sidecar.self_check)."""

from __future__ import annotations

from chaos_sidecar import self_check

ME = "a" * 32


def test_only_an_answer_with_this_processs_instance_id_is_reaching_it() -> None:
    assert self_check.judge(ME, {"ok": True, "instance": ME}, None).result == self_check.REACHABLE
    other = self_check.judge(ME, {"ok": True, "instance": "b" * 32}, None)
    assert other == self_check.Verdict(
        self_check.ANOTHER_PROCESS, f"answered by another process (instance {'b' * 32}), not this sidecar"
    )
    assert "(no sidecar's answer)" in self_check.judge(ME, None, None).detail  # an answer, not JSON
    assert "(no sidecar's answer)" in self_check.judge(ME, ["x"], None).detail
    assert self_check.judge(ME, None, "Connection refused") == self_check.Verdict(
        self_check.UNREACHABLE, "Connection refused"
    )


def test_the_line_names_the_flag_or_where_the_default_came_from() -> None:
    refused = self_check.Verdict(self_check.UNREACHABLE, "Connection refused")
    line = self_check.warning(True, "http://10.0.0.9:7070", refused)
    assert line.startswith(
        "--advertise http://10.0.0.9:7070 does not reach this sidecar (Connection refused)"
    )
    default = self_check.warning(False, "http://0.0.0.0:7070", refused)
    assert default.startswith(
        "the advertised address http://0.0.0.0:7070 (from --host/--port) does not reach"
    )
    other = self_check.judge(ME, {"instance": "b" * 32}, None)
    assert " is answered by another process " in self_check.warning(True, "http://h:1", other)
