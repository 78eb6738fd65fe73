"""Real servers for end-to-end tests: the suite's ASGI app under daphne or uvicorn, on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class DaphneServer:
    """``tests.asgi:application`` under a real daphne process, on the suite's test database.

    ``overrides`` are settings (JSON-serialisable) applied in the server process.
    """

    def __init__(
        self, overrides: dict[str, Any] | None = None, *, env: dict[str, str] | None = None
    ) -> None:
        self.overrides = overrides or {}
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a pipe nobody reads would block a chatty server.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    def start(self) -> Self:
        env = {
            **os.environ,
            **self.env,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "COPILOTEDGE_TEST_DATABASE_NAME": str(connection.settings_dict["NAME"]),
            "COPILOTEDGE_TEST_OVERRIDES": json.dumps(self.overrides),
            "PYTHONPATH": str(ROOT),
        }
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            self.stop()
            raise
        return self

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "daphne"),
            *("-b", "127.0.0.1", "-p", str(self.port)),
            "tests.asgi:application",
        ]

    def stop(self) -> str:
        """Stop the server; returns what it wrote to stderr (tracebacks, if any)."""
        if self.process is None:
            return ""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class UvicornServer(DaphneServer):
    """``tests.asgi:application`` under a real uvicorn process (with the ASGI lifespan)."""

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "uvicorn"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "on"),
            "tests.asgi:application",
        ]


class RedisServer:
    """A private ``redis-server`` on a free loopback port, to stop and restart at will.

    Tests that kill Redis use this one, never the machine's shared server.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            self.stop()
            raise
        return self

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def kill(self) -> None:
        """Kill it as a crash would (SIGKILL: no clean shutdown); ``start()`` brings it back."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
