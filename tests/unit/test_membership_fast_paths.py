"""Shortcuts the membership machine takes at 1,000 members give what the plain way gives."""

import dataclasses

import pytest

from chaos_sidecar.membership import machine as sm
from chaos_sidecar.protocol import Message, Suspect


def test_sends_made_for_a_broadcast_are_ordinary_sends():
    message = Message("a", 1, Suspect("b"))
    fast = sm._sends(("a", "b", "c"), ("http://a", "http://b", "http://c"), message, "a")
    usual = [sm.Send("b", "http://b", message), sm.Send("c", "http://c", message)]
    assert fast == usual and [hash(f) for f in fast] == [hash(u) for u in usual]
    assert all(type(f) is sm.Send for f in fast) and repr(fast) == repr(usual)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast[0].to = "c"  # type: ignore[misc]
