"""``make soak``: ten minutes of moderate load with client hang-ups and upstream faults.

Checks that one server process does not grow (open files, threads, upstream
connections, memory) beyond a bound, and that the usage ledger has exactly one row per
request the server saw. Not part of CI; run it before a release.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from . import processes
from .rawhttp import Connection

# Faults that end one answer; 5xx are left out, since enough of them (rightly) open the
# circuit and the soak would then measure fail-fast answers rather than streams.
FAULTS = ["error:429:3036", "error:400:5006", "drop:5", "malformed:3", "stall:2:0.3"]
BOUNDS = {"fds": 30, "threads": 8, "upstream_connections": 30, "rss_kib": 40 * 1024}


def sample(pid: int, emulator_port: int) -> dict[str, int]:
    process = psutil.Process(pid)
    upstream = [
        c
        for c in process.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == emulator_port and c.status == psutil.CONN_ESTABLISHED
    ]
    return {
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "upstream_connections": len(upstream),
        "rss_kib": process.memory_info().rss // 1024,
    }


async def load(url: str, key: str, seconds: float, concurrency: int) -> dict[str, int]:
    counts = {"sent": 0, "completed": 0, "hung_up": 0, "faulted": 0}
    deadline = time.monotonic() + seconds
    rng = random.Random(7)

    async def worker() -> None:
        connection = Connection(url, {"Authorization": f"Bearer {key}"})
        while time.monotonic() < deadline:
            roll = rng.random()
            text = "Tell me something."
            if roll < 0.15:
                text += f" [[fault:{rng.choice(FAULTS)}]]"
                counts["faulted"] += 1
            body = {"messages": [{"role": "user", "content": text}], "stream": True}
            counts["sent"] += 1
            try:
                _, ok = await connection.post_stream(body, hang_up_early=0.15 <= roll < 0.3)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                await connection.close()
                ok = False
            if 0.15 <= roll < 0.3:
                counts["hung_up"] += 1
            counts["completed"] += ok
        await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def ledger_rows(env: dict[str, str]) -> int:
    script = (
        "import django; django.setup()\n"
        "from copilotedge.models import UsageRecord\n"
        "print(UsageRecord.objects.count())"
    )
    out = subprocess.run(
        [processes.PYTHON, "-c", script],
        cwd=processes.ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="copilotedge-soak-")
    emulator_port, site_port = processes.free_port(), processes.free_port()
    env = processes.site_env(
        emulator_port,
        os.environ.get("DATABASE_URL") or f"sqlite:///{tmp}/soak.sqlite3",
        os.environ.get("REDIS_URL", ""),
    )
    key = processes.prepare_database(env)
    url = f"http://127.0.0.1:{site_port}/copilotedge/v1/chat/completions"
    emulator = processes.emulator_args(emulator_port, tokens=20, token_delay=0.01)
    with (
        processes.running(emulator, emulator_port, env),
        processes.running(processes.daphne_args(site_port), site_port, env) as site,
    ):
        before = ledger_rows(env)
        warm = asyncio.run(load(url, key, min(60, args.seconds / 10), args.concurrency))
        first = sample(site.pid, emulator_port)
        counts = asyncio.run(load(url, key, args.seconds, args.concurrency))
        time.sleep(3)  # let the last ledger writes land
        last = sample(site.pid, emulator_port)
        rows = ledger_rows(env) - before
    sent = warm["sent"] + counts["sent"]
    growth = {name: last[name] - first[name] for name in first}
    result: dict[str, Any] = {
        "seconds": args.seconds,
        "requests": sent,
        "counts": counts,
        "ledger_rows": rows,
        "ledger_matches": rows == sent,
        "after_warmup": first,
        "at_end": last,
        "growth": growth,
        "within_bounds": all(growth[name] <= bound for name, bound in BOUNDS.items()),
    }
    out = Path(__file__).resolve().parent / "results" / "soak.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not (result["ledger_matches"] and result["within_bounds"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
