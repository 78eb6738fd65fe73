"""``make bench``: the proxy measured against the emulator called directly, in one run.

Starts the Workers AI emulator and the demo site under daphne (or uvicorn) on loopback, then
runs each section and writes ``bench/results/latest.json``, ``latest.md`` and ``latest.png``.
See ``bench/README.md`` for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import capacity, litellm_peer, load, processes, repeat, report, streams

RESULTS = Path(__file__).resolve().parent / "results"
METRICS_TOKEN = "bench-metrics-token-not-secret"
SECTIONS = ("streams", "capacity", "websocket", "ratelimit", "admin")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def optional(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a section that needs an optional service; record why it did not run."""
    try:
        return run()
    except Exception as error:  # a missing service must not lose the other numbers
        return {"skipped": f"{type(error).__name__}: {error}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for TTFT")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of a throughput run")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams held")
    parser.add_argument(
        "--sweep",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=list(capacity.SWEEP),
        help="held-stream counts of the capacity sweep, comma-separated",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the streams section N times; report each figure's median and range",
    )
    parser.add_argument("--sockets", type=int, default=500, help="concurrent WebSockets")
    parser.add_argument("--admin-rows", type=int, default=1_000_000)
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx", "openai"),
        default="raw",
        help="load generator's HTTP client: raw (lightest), httpx, or the openai SDK",
    )
    parser.add_argument(
        "--server",
        choices=processes.SERVERS,
        default="daphne",
        help="ASGI server for copilotedge and the bare relay (uvicorn: with uvloop and httptools)",
    )
    parser.add_argument(
        "--no-litellm",
        action="store_true",
        help="leave LiteLLM's proxy out of the streams section (it installs on first use)",
    )
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    args = parser.parse_args()
    sections = args.only or list(SECTIONS)
    load.CLIENT = args.client

    tmp = tempfile.mkdtemp(prefix="copilotedge-bench-")
    database_url = args.database_url or f"sqlite:///{tmp}/bench.sqlite3"
    fast_port, slow_port = processes.free_port(), processes.free_port()
    site_ports = [processes.free_port() for _ in range(4)]
    env = processes.site_env(fast_port, database_url, args.redis_url)
    env["COPILOTEDGE_METRICS_TOKEN"] = METRICS_TOKEN
    slow_env = {**env, "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{slow_port}/client/v4"}
    key = processes.prepare_database(env)
    auth = {"Authorization": f"Bearer {key}"}
    result: dict[str, Any] = {"machine": machine(), "client": args.client, "server": args.server}

    def serve(port: int) -> list[str]:
        return processes.server_args(args.server, port)

    with contextlib.ExitStack() as stack:
        run = stack.enter_context
        run(
            processes.running(
                processes.emulator_args(fast_port, tokens=20, token_delay=0), fast_port, env
            )
        )
        run(
            processes.running(
                processes.emulator_args(slow_port, tokens=50, token_delay=0.1), slow_port, env
            )
        )
        for port in site_ports[:2]:
            run(processes.running(serve(port), port, env))
        slow_site = run(processes.running(serve(site_ports[2]), site_ports[2], slow_env))
        bare_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.passthrough_settings"}
        run(processes.running(serve(site_ports[3]), site_ports[3], bare_env))
        bare_slow_port = processes.free_port()
        bare_slow_site = run(
            processes.running(
                serve(bare_slow_port),
                bare_slow_port,
                {**slow_env, "DJANGO_SETTINGS_MODULE": "bench.passthrough_settings"},
            )
        )
        bare = load.Target(
            "bare", f"http://127.0.0.1:{site_ports[3]}/copilotedge/v1/chat/completions"
        )
        direct = load.Target(
            "direct",
            f"http://127.0.0.1:{fast_port}/client/v4/accounts/bench/ai/v1/chat/completions",
            {"Authorization": "Bearer bench"},
        )
        proxies = [
            load.Target(f"proxy{i}", f"http://127.0.0.1:{p}/copilotedge/v1/chat/completions", auth)
            for i, p in enumerate(site_ports[:2])
        ]
        if "streams" in sections:
            peer = None
            if not args.no_litellm:
                try:
                    peer = run(_litellm(fast_port, Path(tmp)))
                except Exception as error:  # the other paths are measured all the same
                    log = Path(tmp) / "litellm.log"
                    result["litellm"] = {
                        "skipped": f"{type(error).__name__}: {error}"
                        + (f" (its log: {log})" if log.exists() else "")
                    }
            runs = [
                asyncio.run(
                    streams.ttft_and_throughput(
                        direct,
                        bare,
                        proxies,
                        requests=args.requests,
                        seconds=args.seconds,
                        peer=peer,
                    )
                )
                for _ in range(max(args.repeat, 1))
            ]
            result["streams"] = runs[0] if len(runs) == 1 else repeat.combine(runs)
            if len(runs) > 1:
                result["streams_runs"] = runs
        if "capacity" in sections:
            slow = load.Target(
                "slow", f"http://127.0.0.1:{site_ports[2]}/copilotedge/v1/chat/completions", auth
            )
            metrics_url = f"http://127.0.0.1:{site_ports[2]}/copilotedge/metrics"
            held = asyncio.run(
                capacity.hold_streams(slow, slow_site.pid, args.streams, metrics_url, METRICS_TOKEN)
            )
            bare_slow = load.Target(
                "bare-slow", f"http://127.0.0.1:{bare_slow_port}/copilotedge/v1/chat/completions"
            )
            held_bare = asyncio.run(
                capacity.hold_streams(bare_slow, bare_slow_site.pid, args.streams)
            )
            sizes = [n for n in args.sweep if n < args.streams]
            rows = asyncio.run(
                capacity.sweep(slow, slow_site.pid, sizes, metrics_url, METRICS_TOKEN)
            )
            bare_rows = asyncio.run(capacity.sweep(bare_slow, bare_slow_site.pid, sizes))
            result["capacity"] = {
                "copilotedge": held,
                "bare": held_bare,
                "sweep": rows,
                "bare_sweep": bare_rows,
                "summary": capacity.summarise(held, held_bare, rows, bare_rows),
            }
        if "websocket" in sections:
            result["websocket"] = optional(
                "websocket",
                lambda: asyncio.run(_websockets(site_ports[2], slow_site.pid, key, args.sockets)),
            )
    if "ratelimit" in sections:
        result["ratelimit"] = optional("ratelimit", lambda: _ratelimit(args.redis_url))
    if "admin" in sections:
        result["admin"] = optional("admin", lambda: _admin(args.database_url, args.admin_rows))

    RESULTS.mkdir(exist_ok=True)
    stem = "latest"
    if args.client != "raw":
        stem += f"-{args.client}"
    if args.server != "daphne":
        stem += f"-{args.server}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = report.markdown(result)
    (RESULTS / f"{stem}.md").write_text(markdown + "\n")
    with contextlib.suppress(ImportError):
        report.plot(result, RESULTS / f"{stem}.png")
    print(markdown)


@contextlib.contextmanager
def _litellm(emulator_port: int, directory: Path) -> Iterator[load.Target]:
    """LiteLLM's proxy, one worker, in front of the emulator: the peer to compare with."""
    executable = litellm_peer.install()
    port = processes.free_port()
    with processes.running(
        litellm_peer.command(executable, port, emulator_port, directory),
        port,
        litellm_peer.environment(),
        timeout=litellm_peer.STARTUP_TIMEOUT,
        log=directory / "litellm.log",
    ):
        yield litellm_peer.target(port)


async def _websockets(port: int, pid: int, key: str, sockets: int) -> dict[str, Any]:
    from . import sockets as ws

    return await ws.hold_sockets(port, pid, key, sockets)


def _ratelimit(redis_url: str) -> dict[str, Any]:
    if not redis_url:
        raise RuntimeError("set REDIS_URL to measure the limiter on Redis")
    from . import ratelimit

    return ratelimit.run(redis_url)


def _admin(database_url: str, rows: int) -> dict[str, Any]:
    if not database_url.startswith(("postgres://", "postgresql://")):
        raise RuntimeError("set DATABASE_URL to a PostgreSQL server to measure the admin report")
    from . import admin_report

    return admin_report.run(database_url, rows)


if __name__ == "__main__":
    main()
