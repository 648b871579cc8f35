"""Clock skew between members, and the one line that tells an operator about it.

Peer requests carry their sender's timestamp and are refused more than ``window_s`` away from
the receiver's clock, and party keys are valid in windows of wall-clock time: a node whose
clock is minutes off is refused by everyone. Each side can measure by how much: the receiver
from an authentic request's timestamp, the sender from the clock a signed refusal carries
(:func:`chaos_sidecar.security.read_refusal`). Pure: times are passed in.
"""

from __future__ import annotations

from chaos_sidecar.parties import KEY_EXPIRED, KEY_NOT_YET_VALID, utc_text

REPORT_CHANGE_S = 5.0  # a skew already reported is reported again when it moved this much ...
REPORT_EVERY_S = 60.0  # ... and this long after the last report (a flood of stale requests stays quiet)
CLOCK_REASONS = ("expired", KEY_NOT_YET_VALID, KEY_EXPIRED)  # refusals a clock can cause


def offset_from_refusal(peer_clock_ns: int, sent_ns: int, answered_ns: int) -> float:
    """The peer's clock minus ours, in seconds: its clock when it refused, against the middle
    of our request's round trip (off by at most half the round trip)."""
    return (peer_clock_ns - (sent_ns + answered_ns) / 2) / 1e9


def worth_reporting(offset_s: float, window_s: float, last: tuple[float, float] | None, now_s: float) -> bool:
    """Whether to say so: a skew outside the window, not reported yet this episode, or moved
    since the last report (``last``: its offset and when, monotonic seconds) long enough ago."""
    if abs(offset_s) <= window_s:
        return False
    if last is None:
        return True
    last_offset_s, last_at_s = last
    return abs(offset_s - last_offset_s) >= REPORT_CHANGE_S and now_s - last_at_s >= REPORT_EVERY_S


def skew_line(peer: str, offset_s: float, window_s: float) -> str:
    """E.g. ``clock skew: peer n1's clock is 183 s ahead of ours; requests are refused outside
    ±30 s (run NTP on both)``."""
    side = "ahead of" if offset_s > 0 else "behind"
    return (
        f"clock skew: peer {peer}'s clock is {abs(offset_s):.0f} s {side} ours; requests are refused "
        f"outside ±{window_s:.0f} s (run NTP on both)"
    )


def key_window_line(
    peer: str,
    reason: str,
    party: str,
    peer_clock_s: float,
    our_clock_s: float,
    window: tuple[float, float] | None,
) -> str:
    """Why a peer refused our party key for its window, with both clocks: e.g. ``party key of
    a refused by peer n1 as not yet valid: its clock reads 2026-12-02T08:10:00Z, ours
    2026-12-02T08:13:03Z (183 s ahead of it); the key's window: not_before ..., not_after ...``."""
    what = "not yet valid" if reason == KEY_NOT_YET_VALID else "expired"
    offset = our_clock_s - peer_clock_s
    side = "ahead of" if offset >= 0 else "behind"
    line = (
        f"party key of {party} refused by peer {peer} as {what}: its clock reads {utc_text(peer_clock_s)}, "
        f"ours {utc_text(our_clock_s)} ({abs(offset):.0f} s {side} it)"
    )
    if window is not None:
        line += f"; the key's window: not_before {utc_text(window[0])}, not_after {utc_text(window[1])}"
    return line
