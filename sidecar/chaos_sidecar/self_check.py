"""Whether a sidecar's advertised URL reaches the sidecar itself, from what came back when it
asked for its own ``/healthz`` there: the answer must carry this process's random instance id,
so another process answering at that address is told apart from this one. Pure."""

from __future__ import annotations

from dataclasses import dataclass

REACHABLE = "reachable"
UNREACHABLE = "unreachable"  # nothing answered (refused, timed out, no route, bad TLS)
ANOTHER_PROCESS = "another_process"  # something answered, not this sidecar


@dataclass(frozen=True)
class Verdict:
    result: str
    detail: str


def judge(instance: str, answer: object, error: str | None) -> Verdict:
    """``answer``: the JSON of the answer (None when none came), ``error``: why none came."""
    if error is not None:
        return Verdict(UNREACHABLE, error)
    theirs = answer.get("instance") if isinstance(answer, dict) else None
    if theirs == instance:
        return Verdict(REACHABLE, "")
    what = f"instance {theirs}" if isinstance(theirs, str) else "no sidecar's answer"
    return Verdict(ANOTHER_PROCESS, f"answered by another process ({what}), not this sidecar")


def warning(flag_given: bool, advertise: str, verdict: Verdict) -> str:
    """The line for this node's operator, naming the flag and the address."""
    where = (
        f"--advertise {advertise}"
        if flag_given
        else f"the advertised address {advertise} (from --host/--port)"
    )
    if verdict.result == ANOTHER_PROCESS:
        return (
            f"{where} is {verdict.detail}: peers given it would talk to that process; "
            "check the address and its port"
        )
    return (
        f"{where} does not reach this sidecar ({verdict.detail}): peers given it will never hear this "
        "node; check the address, its port and the firewall (a Kubernetes node or load balancer may "
        "also not let a pod reach itself through it: then only the other sites can tell)"
    )
