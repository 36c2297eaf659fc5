"""The chaos proxy's ``connect_delay``: a server slow to connect to, fast to answer.

The spike benchmark relies on it (150 ms per connect, queries at full speed). These tests
use a local echo server, so they need no database.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .proxy import ChaosProxy

DELAY = 0.3


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@contextmanager
def _echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_each_new_connection_is_held_back_then_forwarded_at_full_speed() -> None:
    with _echo_server() as port, ChaosProxy("127.0.0.1", port, connect_delay=DELAY) as proxy:
        for _ in range(2):  # every new connection waits, not only the first
            started = time.monotonic()
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
                assert _round_trip(sock, b"first") == b"first"
                connected = time.monotonic()
                assert connected - started >= DELAY
                # Once forwarded, traffic is not delayed (unlike the "latency" mode).
                assert _round_trip(sock, b"second") == b"second"
                assert time.monotonic() - connected < DELAY
        assert proxy.accepted == 2


def test_close_ends_a_connection_still_held_back() -> None:
    with _echo_server() as port:
        proxy = ChaosProxy("127.0.0.1", port, connect_delay=60.0)
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            deadline = time.monotonic() + 5
            while proxy.accepted == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proxy.accepted == 1
            started = time.monotonic()
            proxy.close()
            assert time.monotonic() - started < 5  # not the 60 s delay
            sock.settimeout(5)
            try:
                assert sock.recv(1) == b""  # closed, nothing forwarded
            except ConnectionResetError:
                pass
        assert proxy.connections == 0
