"""What ``make run`` does: migrate, create the demo user, and serve the demo site under
daphne. With no ``CLOUDFLARE_API_TOKEN`` it also starts the built-in Workers AI emulator
on loopback and points the site at it. ``make cluster`` (``--processes N``) serves the
same site from N daphne processes on consecutive ports, on PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DATABASE = "postgres://postgres@127.0.0.1:5432/copilotedge"
CLUSTER_REDIS = "redis://127.0.0.1:6379/1"


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def start_emulator(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the emulator and point ``env`` at it."""
    port = env.get("EMULATOR_PORT", "8788")
    delay = env.get("EMULATOR_TOKEN_DELAY", "0.03")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "copilotedge_emulator",
            "--port",
            port,
            "--token-delay",
            delay,
        ],
        cwd=ROOT,
        env=env,
    )
    env.update(
        CLOUDFLARE_API_BASE_URL=f"http://127.0.0.1:{port}/client/v4",
        CLOUDFLARE_ACCOUNT_ID="emulator",
        CLOUDFLARE_API_TOKEN="emulator",
    )
    print(
        f"No CLOUDFLARE_API_TOKEN set: using the built-in Workers AI emulator on "
        f"http://127.0.0.1:{port} (canned answers). Set CLOUDFLARE_ACCOUNT_ID and "
        "CLOUDFLARE_API_TOKEN to talk to Cloudflare.",
        flush=True,
    )
    return process


def create_database(url: str) -> None:
    """Create the cluster's PostgreSQL database if it does not exist yet."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if exists.fetchone() is None:
            connection.execute(f'CREATE DATABASE "{name}"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    env = dict(os.environ)
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    if args.processes > 1:
        env.setdefault("DATABASE_URL", CLUSTER_DATABASE)
        env.setdefault("REDIS_URL", CLUSTER_REDIS)
        if env["DATABASE_URL"].startswith("postgres"):
            create_database(env["DATABASE_URL"])
    processes: list[subprocess.Popen[bytes]] = []
    # A SIGTERM (a process manager, ``kill``) ends the demo as Ctrl+C does: through the
    # ``finally`` below, so the servers are stopped too, not left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        if not env.get("CLOUDFLARE_API_TOKEN"):
            processes.append(start_emulator(env))
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("demo_user", env=env)
        ports = [port + i for i in range(args.processes)]
        for p in ports:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "daphne",
                        # Twisted's default backlog of 50 drops connections in a burst.
                        "-e",
                        f"tcp:port={p}:interface={host}:backlog=1024",
                        "project.asgi:application",
                    ],
                    cwd=ROOT,
                    env=env,
                )
            )
        urls = ", ".join(f"http://{host}:{p}/" for p in ports)
        print(
            f"Serving the demo on {urls} (sign in as demo/demo; admin at /admin/).\n"
            "An API key for the OpenAI SDK: "
            ".venv/bin/python manage.py copilotedge_create_key --user demo",
            flush=True,
        )
        return processes[-1].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # The sites first (each finishes or ends its answers in flight), then the emulator
        # that answers them.
        for process in reversed(processes):
            process.terminate()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
