"""Where a streamed completion's server time goes: the site under cProfile, under load.

The emulator runs in a process of its own (no token delay, 20 tokens); the site runs
under ``python -m cProfile`` with daphne or uvicorn; the raw client (or ``--client
httpx``) streams completions at ``--concurrency`` for ``--seconds``; then the site is
stopped with SIGINT, which writes the profile, and the top functions are printed by
cumulative and by own time, with the requests the profile covers so that per-request
figures can be compared between runs.

``python -m bench.profile [--server daphne|uvicorn] [--relay] [--redis] [--top 10]``;
the whole profile is kept in ``bench/results/profile-<name>.pstats`` for ``snakeviz`` or
``python -m pstats``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import signal
import subprocess
import tempfile
from pathlib import Path

from . import load, processes
from .load import Target

RESULTS = Path(__file__).resolve().parent / "results"
POSTGRES = "postgres://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def _profiled(args: list[str], out: Path) -> list[str]:
    """``python -m server ...`` as ``python -m cProfile -o out -m server ...``."""
    python, flag, *rest = args
    assert flag == "-m", args
    return [python, "-m", "cProfile", "-o", str(out), "-m", *rest]


def _table(stats: pstats.Stats, order: str, top: int) -> str:
    stream = io.StringIO()
    stats.stream = stream  # type: ignore[attr-defined]
    stats.sort_stats(order).print_stats(top)
    lines = stream.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return "\n".join(lines[start:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=processes.SERVERS, default="daphne")
    parser.add_argument("--relay", action="store_true", help="the bare Django relay instead")
    parser.add_argument("--redis", action="store_true", help="PostgreSQL + Redis, not SQLite")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    load.CLIENT = args.client

    tmp = Path(tempfile.mkdtemp(prefix="copilotedge-bench-profile-"))
    emulator_port, site_port = processes.free_port(), processes.free_port()
    emulator = processes.emulator_args(emulator_port, tokens=20, token_delay=0)
    database = POSTGRES if args.redis else f"sqlite:///{tmp}/bench.sqlite3"
    env = processes.site_env(emulator_port, database, REDIS if args.redis else "")
    if args.relay:
        env["BENCH_SETTINGS"] = env["DJANGO_SETTINGS_MODULE"] = "bench.passthrough_settings"
    name = f"{'relay' if args.relay else 'copilotedge'}-{args.server}"
    name += "-postgres-redis" if args.redis else "-sqlite"
    out = tmp / "site.pstats"
    with processes.running(emulator, emulator_port, dict(os.environ)):
        key = processes.prepare_database(env)
        site = _profiled(processes.server_args(args.server, site_port), out)
        process = subprocess.Popen(site, cwd=processes.ROOT, env=env, stdout=subprocess.DEVNULL)
        try:
            processes.wait_for_port(site_port, 60, process)
            # The relay serves the same path and ignores the key.
            url = f"http://127.0.0.1:{site_port}/copilotedge/v1/chat/completions"
            target = Target(name, url, {"Authorization": f"Bearer {key}"})
            result = asyncio.run(load.throughput([target], args.concurrency, args.seconds))
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    requests = result["completed"] + result["errors"] + args.concurrency  # with the warm-up
    stats = pstats.Stats(str(out))
    RESULTS.mkdir(exist_ok=True)
    stats.dump_stats(str(RESULTS / f"profile-{name}.pstats"))
    stats.strip_dirs()
    print(f"{name}: {result['per_second']}/s at c{args.concurrency}, {requests} requests profiled")
    print(f"\nTop {args.top} by cumulative time\n{_table(stats, 'cumulative', args.top)}")
    print(f"\nTop {args.top} by own time\n{_table(stats, 'tottime', args.top)}")


if __name__ == "__main__":
    main()
