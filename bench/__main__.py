"""``make bench``: the proxy against the emulator called directly, in one run.

Starts the Workers AI emulator (no token delay, 20 tokens an answer) and the demo site
under daphne on loopback, then measures time to first token at concurrency 1 and
streamed completions per second at concurrency 10, for both paths. Prints a table and
writes ``bench/results/latest.json`` and ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from . import load, processes

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


async def measure(
    direct: load.Target, proxy: load.Target, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for target in (direct, proxy):
        result[target.name] = {
            "ttft_c1": await load.ttft_sequential(target, args.requests),
            "throughput_c10": await load.throughput(target, 10, args.seconds),
        }
    d, p = result["direct"], result["proxy"]
    result["summary"] = {
        "added_ttft_p50_ms": round(
            p["ttft_c1"]["ttft_ms"]["p50"] - d["ttft_c1"]["ttft_ms"]["p50"], 3
        ),
        "added_ttft_p95_ms": round(
            p["ttft_c1"]["ttft_ms"]["p95"] - d["ttft_c1"]["ttft_ms"]["p95"], 3
        ),
        "added_ttft_p99_ms": round(
            p["ttft_c1"]["ttft_ms"]["p99"] - d["ttft_c1"]["ttft_ms"]["p99"], 3
        ),
        "throughput_ratio_c10": round(
            p["throughput_c10"]["per_second"] / max(d["throughput_c10"]["per_second"], 1e-9), 3
        ),
    }
    return result


def table(result: dict[str, Any]) -> str:
    rows = ["| measure | direct emulator | proxy (daphne) | proxy vs direct |", "|---|---|---|---|"]
    d, p, s = result["direct"], result["proxy"], result["summary"]
    for q in ("p50", "p95", "p99"):
        rows.append(
            f"| TTFT {q}, concurrency 1 (ms) | {d['ttft_c1']['ttft_ms'][q]} | "
            f"{p['ttft_c1']['ttft_ms'][q]} | +{s[f'added_ttft_{q}_ms']} ms |"
        )
    rows.append(
        f"| streamed completions/s, concurrency 10 | {d['throughput_c10']['per_second']} | "
        f"{p['throughput_c10']['per_second']} | {s['throughput_ratio_c10'] * 100:.1f}% |"
    )
    rows.append(
        f"| errors | {d['ttft_c1']['errors'] + d['throughput_c10']['errors']} | "
        f"{p['ttft_c1']['errors'] + p['throughput_c10']['errors']} | |"
    )
    for name, extra in result.get("extra", {}).items():
        rows.append(f"| {name} | | {json.dumps(extra)} | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for TTFT")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="duration of each throughput run"
    )
    parser.add_argument("--database-url", default="", help="defaults to a fresh SQLite file")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="copilotedge-bench-")
    database_url = args.database_url or f"sqlite:///{tmp}/bench.sqlite3"
    emulator_port, site_port = processes.free_port(), processes.free_port()
    env = processes.site_env(emulator_port, database_url, args.redis_url)
    key = processes.prepare_database(env)
    emulator = processes.emulator_args(emulator_port, tokens=20, token_delay=0)
    with (
        processes.running(emulator, emulator_port, env),
        processes.running(processes.daphne_args(site_port), site_port, env),
    ):
        direct = load.Target(
            "direct",
            f"http://127.0.0.1:{emulator_port}/client/v4/accounts/bench/ai/v1/chat/completions",
            {"Authorization": "Bearer bench"},
        )
        proxy = load.Target(
            "proxy",
            f"http://127.0.0.1:{site_port}/copilotedge/v1/chat/completions",
            {"Authorization": f"Bearer {key}"},
        )
        result = asyncio.run(measure(direct, proxy, args))
    result["machine"] = machine()
    result["config"] = {
        "tokens": 20,
        "token_delay": 0,
        "database": database_url.split(":")[0],
        "redis": bool(args.redis_url),
        "requests": args.requests,
        "seconds": args.seconds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = table(result)
    (RESULTS / "latest.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
