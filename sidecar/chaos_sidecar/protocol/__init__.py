"""Wire messages between sidecars: versioned, size-bounded JSON, parsed into typed objects.

No I/O here: adapters pass bytes in and get :class:`Message` objects out (or a
:class:`~chaos_sidecar.errors.ProtocolError` carrying a short reason label).
"""

from chaos_sidecar.protocol.messages import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Accept,
    Accepted,
    Ballot,
    Commit,
    Heartbeat,
    Join,
    Leave,
    LinkDown,
    LinkUp,
    Message,
    Nack,
    Prepare,
    Promise,
    Relay,
    Suspect,
    View,
    ViewRequest,
    decode,
    encode,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "Accept",
    "Accepted",
    "Ballot",
    "Commit",
    "Heartbeat",
    "Join",
    "Leave",
    "LinkDown",
    "LinkUp",
    "Message",
    "Nack",
    "Prepare",
    "Promise",
    "Relay",
    "Suspect",
    "View",
    "ViewRequest",
    "decode",
    "encode",
]
