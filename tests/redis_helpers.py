"""Redis test helpers: where the shared server is, how to count a pool's connections on it,
and private ``redis-server`` processes for tests that restart, pause or reconfigure a server.

Every pool under test gets a unique name, which the adapter sends as the connection's client
name (``CLIENT SETNAME``), so that the server-side connection count (``CLIENT LIST``) can be
compared with the pool's size. The shared server is never reconfigured: tests that need
``maxclients``, ``timeout``, ``requirepass``, ``CLIENT PAUSE`` or a restart start their own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from conftest import require_server

REDIS_HOST = os.environ.get("TIDEPOOL_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TIDEPOOL_TEST_REDIS_PORT", "6379"))
_names = itertools.count(1)


def require_redis() -> None:
    """Skip (locally) or fail (CI) unless the shared Redis accepts connections."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)


def unique(prefix: str = "tp") -> str:
    """A unique name for a key, a user or a pool (valid as a Redis client name)."""
    return f"{prefix}-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


def redis_url(db: int = 0, *, port: int = REDIS_PORT, auth: str = "", **params: str) -> str:
    """URL of a server on this machine; ``auth`` is ``user:password@`` text."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"redis://{auth}{REDIS_HOST}:{port}/{db}" + (f"?{query}" if query else "")


@contextmanager
def admin(port: int = REDIS_PORT) -> Iterator[redis.Redis]:
    """A separate client (RESP2, str replies) for inspecting and poking the server."""
    client = redis.Redis(
        host=REDIS_HOST, port=port, protocol=2, decode_responses=True, socket_timeout=10
    )
    try:
        yield client
    finally:
        client.close()


def clients(name: str, port: int = REDIS_PORT) -> list[dict[str, str]]:
    """The ``CLIENT LIST`` entries of connections named ``name``."""
    with admin(port) as conn:
        listed = conn.client_list()
    return [entry for entry in listed if entry.get("name") == name]


def client_ids(name: str, port: int = REDIS_PORT) -> list[int]:
    return sorted(int(entry["id"]) for entry in clients(name, port))


def wait_clients(name: str, expected: int, timeout: float = 10.0, port: int = REDIS_PORT) -> int:
    """Wait until the server shows ``expected`` connections named ``name``; return the last
    count."""
    deadline = time.monotonic() + timeout
    count = len(clients(name, port))
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = len(clients(name, port))
    return count


def kill_clients(name: str, port: int = REDIS_PORT) -> int:
    """``CLIENT KILL ID`` every connection named ``name``; return how many."""
    ids = client_ids(name, port)
    with admin(port) as conn:
        for client_id in ids:
            conn.execute_command("CLIENT", "KILL", "ID", client_id)
    return len(ids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((REDIS_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` child process of this test on a free port, nothing on disk.

    ``start()`` waits until it answers; ``stop()`` terminates it by its own pid (and kills it
    if it does not exit). Usable as a context manager (stopped on exit).
    """

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="tp-redis-")

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", REDIS_HOST, "--save", ""),
                *("--appendonly", "no", "--daemonize", "no", "--dir", self._dir, *self.args),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((REDIS_HOST, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def url(self, db: int = 0, *, auth: str = "", **params: str) -> str:
        return redis_url(db, port=self.port, auth=auth, **params)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
