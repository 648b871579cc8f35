"""Clock skew: the offset a refusal's clock gives, when it is worth a line, the lines
themselves, and the signed refusal a sender can trust (chaos_sidecar.clock_skew, security)."""

from __future__ import annotations

import calendar

from chaos_sidecar import clock_skew, parties
from chaos_sidecar.security import (
    SIGNATURE_HEADER,
    RotatingSecret,
    Verifier,
    read_refusal,
    refusal_headers,
    signed_headers,
)

SECRET = b"s" * 32
S = 10**9


def test_the_offset_is_the_peers_clock_against_the_middle_of_the_round_trip() -> None:
    assert (
        clock_skew.offset_from_refusal(1_000 * S + 183 * S, 1_000 * S - S // 10, 1_000 * S + S // 10) == 183.0
    )
    assert clock_skew.offset_from_refusal(1_000 * S, 1_183 * S, 1_183 * S) == -183.0


def test_a_skew_is_reported_outside_the_window_once_then_when_it_moved_at_most_once_a_minute() -> None:
    assert not clock_skew.worth_reporting(29.9, 30, None, 0)
    assert clock_skew.worth_reporting(-183, 30, None, 0)
    assert not clock_skew.worth_reporting(-184, 30, (-183, 0), 600)  # about the same
    assert not clock_skew.worth_reporting(-190, 30, (-183, 0), 59)  # moved, but said a moment ago
    assert clock_skew.worth_reporting(-190, 30, (-183, 0), 60)


def test_the_lines_name_the_peer_the_direction_the_amount_and_the_window() -> None:
    assert clock_skew.skew_line("n1", 183.4, 30) == (
        "clock skew: peer n1's clock is 183 s ahead of ours; "
        "requests are refused outside ±30 s (run NTP on both)"
    )
    assert "peer n1's clock is 5 s behind ours" in clock_skew.skew_line("n1", -5, 30)
    nb = calendar.timegm((2026, 12, 2, 8, 0, 0))
    line = clock_skew.key_window_line(
        "a-0", parties.KEY_NOT_YET_VALID, "a", nb - 10, nb + 19, (nb, float("inf"))
    )
    assert line == (
        "party key of a refused by peer a-0 as not yet valid: its clock reads 2026-12-02T07:59:50Z, "
        "ours 2026-12-02T08:00:19Z (29 s ahead of it); "
        "the key's window: not_before 2026-12-02T08:00:00Z, not_after none"
    )
    assert " as expired: " in clock_skew.key_window_line("a-0", parties.KEY_EXPIRED, "a", 0, 0, None)


def test_a_refusal_is_trusted_only_with_the_secret_and_for_the_request_it_answers() -> None:
    answer = refusal_headers(SECRET, "expired", "n1", 1_183 * S, "sig-1")
    assert read_refusal(SECRET, answer, "sig-1", 1_000 * S) == read_refusal(SECRET, answer, "sig-1", 0)
    refusal = read_refusal(SECRET, answer, "sig-1", 0)
    assert refusal is not None and (refusal.reason, refusal.refuser, refusal.clock_ns) == (
        "expired",
        "n1",
        1_183 * S,
    )
    assert read_refusal(b"t" * 32, answer, "sig-1", 0) is None  # another job's secret
    assert read_refusal(SECRET, answer, "sig-2", 0) is None  # an answer to another request
    assert read_refusal(SECRET, {**answer, "X-Chaos-Clock": str(1_000 * S)}, "sig-1", 0) is None  # altered
    assert read_refusal(SECRET, {}, "sig-1", 0) is None
    ring = RotatingSecret(SECRET)
    ring.offer(b"n" * 32, 0)  # during a rotation the new key's refusals are trusted too
    assert read_refusal(ring, refusal_headers(b"n" * 32, "expired", "n1", 5, "x"), "x", 0) is not None


def test_the_senders_offset_is_read_from_an_authentic_request_only() -> None:
    verifier = Verifier(SECRET)
    headers = signed_headers(SECRET, "GET", "/v1/stream", b"", 1_183 * S, "n1")
    assert verifier.check("GET", "/v1/stream", b"", headers, 1_000 * S) == "expired"
    assert verifier.sender_clock_offset_ns("GET", "/v1/stream", b"", headers, 1_000 * S) == 183 * S
    forged = {**headers, SIGNATURE_HEADER: "0" * 64}
    assert verifier.sender_clock_offset_ns("GET", "/v1/stream", b"", forged, 1_000 * S) is None
    assert verifier.sender_clock_offset_ns("GET", "/v1/stream", b"", {}, 1_000 * S) is None
