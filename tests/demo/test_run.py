"""``make run``'s launcher (``project.run``): a SIGTERM stops the servers it started too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.servers import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.timeout(90)


def test_sigterm_stops_the_site_and_the_emulator(tmp_path: Path) -> None:
    port, emulator_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "DJANGO_"))},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "EMULATOR_PORT": str(emulator_port),
    }
    env.pop("REDIS_URL", None)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "project.run"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 2  # the emulator and daphne
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                  for child in children) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.1)
        assert not [c.pid for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        if launcher.poll() is None:
            launcher.kill()
