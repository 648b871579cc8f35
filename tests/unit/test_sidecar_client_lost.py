"""The trainer's sidecar client when its sidecar dies: refused, or gone in the middle of a call
(the sidecar killed while it pulls the state), both are SidecarLost, never a raw error."""

from __future__ import annotations

import socket
import threading

import pytest

from chaos_train.sidecar_client import SidecarClient, SidecarLost


def test_a_sidecar_that_closes_the_connection_mid_call_is_lost() -> None:
    """A real listening socket that reads the request and closes without answering, as a
    sidecar killed during a pull does."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        server.close()

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    with pytest.raises(SidecarLost, match="closed the connection"):
        SidecarClient(f"http://127.0.0.1:{port}").pull("state-e1", ["n0"])
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_sidecar_that_refuses_is_lost() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # the port is closed now: nothing listens there
    with pytest.raises(SidecarLost, match="refused"):
        SidecarClient(f"http://127.0.0.1:{port}").view()
