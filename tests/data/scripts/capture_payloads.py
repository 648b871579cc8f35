"""Record the TCP and UDP payloads crossing one interface for a while, from a raw AF_PACKET
socket (root; run inside the interface's network namespace). Usage:
``capture_payloads.py IFACE SECONDS OUT``. OUT gets one record per packet: 4 bytes of length
(big-endian) then the payload; the last line of stdout says ``frames N bytes M`` (every frame
seen, with its headers)."""

from __future__ import annotations

import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def payload(frame: bytes) -> bytes:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":  # IPv4 only: the sites use nothing else
        return b""
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0] or len(ip)  # 0 on a segmentation-offloaded packet
    proto, body = ip[9], ip[ihl:total]
    if proto == 6 and len(body) >= 20:
        return body[(body[12] >> 4) * 4 :]
    if proto == 17 and len(body) >= 8:
        return body[8:]
    return b""


def main() -> None:
    iface, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    frames = seen = 0
    deadline = time.monotonic() + seconds
    print("capturing", flush=True)
    with open(out, "wb") as f:
        while time.monotonic() < deadline:
            try:
                frame = sock.recv(1 << 17)
            except TimeoutError:
                continue
            frames += 1
            seen += len(frame)
            data = payload(frame)
            if data:
                f.write(struct.pack("!I", len(data)) + data)
    print(f"frames {frames} bytes {seen}", flush=True)


if __name__ == "__main__":
    main()
