"""Start the servers a benchmark measures: the emulator and the site under daphne or uvicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something listens on ``port``; fail early if ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def running(
    args: list[str],
    port: int,
    env: dict[str, str],
    *,
    timeout: float = 30.0,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` until the block ends, once it listens on ``port``.

    Its standard output is dropped, or with its errors written to ``log``.
    """
    output = log.open("wb") if log else None
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=output or subprocess.DEVNULL,
        stderr=output,
    )
    if output:
        output.close()
    try:
        wait_for_port(port, timeout, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def emulator_args(port: int, *, tokens: int, token_delay: float) -> list[str]:
    """The emulator under uvicorn with uvloop and httptools (``manage.py
    copilotedge_emulator`` serves it with daphne): the direct path is the baseline the
    other paths are compared with, so it should cost as little as the emulator can."""
    serve = (
        "import uvicorn\n"
        "from copilotedge.testing import EmulatorApp\n"
        f"app = EmulatorApp(tokens={tokens}, token_delay={token_delay})\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, loop='uvloop', http='httptools',\n"
        "            access_log=False, log_level='warning', backlog=1024)\n"
    )
    return [PYTHON, "-c", serve]


#: Twisted listens with a backlog of 50: a burst of a thousand connections would see
#: SYNs dropped and retried after 1, 3, 7 s... (deploy/ sets the same).
BACKLOG = 1024


#: The demo's ASGI application, served as it is by either server.
ASGI_APP = "project.asgi:application"

#: The servers ``--server`` can run the site under.
SERVERS = ("daphne", "uvicorn")


def daphne_args(port: int) -> list[str]:
    endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog={BACKLOG}"
    return [PYTHON, "-m", "daphne", "-e", endpoint, ASGI_APP]


def uvicorn_args(port: int) -> list[str]:
    """uvicorn with uvloop and httptools, set up as daphne is: same backlog, no access log.

    The keep-alive timeout is raised from uvicorn's 5 s so that a load client's idle
    connection between two phases is not closed under it (daphne keeps it open).
    """
    return [
        PYTHON,
        "-m",
        "uvicorn",
        ASGI_APP,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--backlog",
        str(BACKLOG),
        "--timeout-keep-alive",
        "120",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def server_args(server: str, port: int) -> list[str]:
    """The command serving the demo's ASGI application on ``port`` with ``server``."""
    if server == "uvicorn":
        return uvicorn_args(port)
    return daphne_args(port)


def site_env(emulator_port: int, database_url: str, redis_url: str = "") -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("BENCH_SETTINGS", "project.settings"),
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-only",
        "DATABASE_URL": database_url,
        "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{emulator_port}/client/v4",
        "CLOUDFLARE_ACCOUNT_ID": "bench",
        "CLOUDFLARE_API_TOKEN": "bench",
        # The benchmark measures the proxy, not the limiter's refusals.
        "COPILOTEDGE_RATE_LIMIT": "100000000/m",
        "COPILOTEDGE_TOKEN_RATE_LIMIT": "100000000000/m",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    return env


def prepare_database(env: dict[str, str]) -> str:
    """Migrate the bench database and return a fresh API key for the bench user."""
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    out = subprocess.run(
        [PYTHON, "-c", _CREATE_KEY], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


_CREATE_KEY = """
import django
django.setup()
from django.contrib.auth import get_user_model
from copilotedge.models import ApiKey
user, _ = get_user_model().objects.get_or_create(username="bench")
print(ApiKey.create_key(user, name="bench")[1])
"""
