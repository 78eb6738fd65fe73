"""What ``make run`` does: migrate, collect static files, create the demo user, and serve the
demo site under daphne. With no ``CLOUDFLARE_API_TOKEN`` it also starts the built-in Workers
AI emulator on loopback and points the site at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    host = env.get("HOST", "127.0.0.1")
    port = env.get("PORT", "8000")
    processes: list[subprocess.Popen[bytes]] = []
    if not env.get("CLOUDFLARE_API_TOKEN"):
        emulator_port = env.get("EMULATOR_PORT", "8788")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "copilotedge_emulator",
                    "--port",
                    emulator_port,
                    "--token-delay",
                    env.get("EMULATOR_TOKEN_DELAY", "0.03"),
                ],
                cwd=ROOT,
                env=env,
            )
        )
        env.update(
            CLOUDFLARE_API_BASE_URL=f"http://127.0.0.1:{emulator_port}/client/v4",
            CLOUDFLARE_ACCOUNT_ID="emulator",
            CLOUDFLARE_API_TOKEN="emulator",
        )
        print(
            f"No CLOUDFLARE_API_TOKEN set: using the built-in Workers AI emulator on "
            f"http://127.0.0.1:{emulator_port} (answers are canned). Set CLOUDFLARE_ACCOUNT_ID "
            "and CLOUDFLARE_API_TOKEN to talk to Cloudflare.",
            flush=True,
        )
    try:
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("demo_user", env=env)
        print(
            f"Serving the demo on http://{host}:{port}/ (sign in as demo/demo; admin at /admin/).\n"
            "An API key for the OpenAI SDK: "
            ".venv/bin/python manage.py copilotedge_create_key --user demo",
            flush=True,
        )
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", host, "-p", port, "project.asgi:application"],
            cwd=ROOT,
            env=env,
        )
        processes.append(daphne)
        return daphne.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
