"""Many concurrent streams held by one server process: completion, memory, loop lag."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx

from . import load

LAG_METRIC = "copilotedge_event_loop_lag_seconds"
#: Held-stream counts of the sweep (``--sweep``): steps fine enough to find where the
#: loop lag's p99 passes 50 ms.
SWEEP = (50, 100, 150, 200, 300, 400, 500)
#: The loop lag a process should keep under: the p99 bound the sweep looks for.
LAG_LIMIT_MS = 50.0
#: Seconds of quiet around a measured run: for the work a stream leaves after its last
#: byte to end, and to read the process's CPU at rest (``idle_cpu_ms_per_second``; the
#: CPU per stream holds that much for the run and the quiet after it).
SETTLE = 1.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


async def sample_peaks(pid: int, stop: asyncio.Event) -> tuple[int, int]:
    """Peak RSS (KiB) and peak thread count of ``pid`` until ``stop`` is set."""
    peak_rss = peak_threads = 0
    while not stop.is_set():
        peak_rss = max(peak_rss, rss_kib(pid))
        peak_threads = max(peak_threads, threads(pid))
        await asyncio.sleep(0.1)
    return max(peak_rss, rss_kib(pid)), peak_threads


def lag_buckets(metrics: str) -> dict[float, float]:
    """Cumulative counts of the loop-lag histogram, by upper bound in seconds."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(f"{LAG_METRIC}_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[-1])
    return buckets


def quantile_bound(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound holding ``q`` of the samples taken between two scrapes."""
    counts = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return 0.0
    for bound in sorted(counts):
        if counts[bound] >= q * total:
            return bound
    return float("inf")


async def scrape(url: str, token: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        return response.text if response.status_code == 200 else ""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hold_streams(
    target: load.Target,
    pid: int,
    count: int,
    metrics_url: str | None = None,
    metrics_token: str = "",
) -> dict[str, Any]:
    """Open ``count`` streams at once and hold them to their end; what that cost the server.

    Without ``metrics_url`` (the bare relay exports no lag histogram) the lag is not read.
    """
    # Warm the process up (imports, pools) before taking the baseline, and let the
    # warm-up streams' work after their last byte (the ledger's writes) end.
    await load.open_streams(target, 20)
    await asyncio.sleep(SETTLE)
    baseline = rss_kib(pid)
    before = lag_buckets(await scrape(metrics_url, metrics_token)) if metrics_url else {}
    idle_before = cpu_seconds(pid)
    await asyncio.sleep(SETTLE)
    cpu_before = cpu_seconds(pid)
    idle_per_second = (cpu_before - idle_before) / SETTLE
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peaks(pid, stop))
    result = await load.open_streams(target, count, read_timeout=300)
    stop.set()
    peak, peak_threads = await sampler
    # The streams' own work after their last byte counts; the metrics scrape does not.
    await asyncio.sleep(SETTLE)
    cpu = cpu_seconds(pid) - cpu_before
    after = lag_buckets(await scrape(metrics_url, metrics_token)) if metrics_url else {}
    result.update(
        rss_baseline_kib=baseline,
        rss_peak_kib=peak,
        rss_growth_per_stream_kib=round((peak - baseline) / count, 1),
        threads_peak=peak_threads,
        cpu_ms_per_stream=round(cpu / count * 1000, 2),
        idle_cpu_ms_per_second=round(idle_per_second * 1000, 2),
        loop_lag_p99_ms_at_most=round(quantile_bound(before, after, 0.99) * 1000, 1)
        if after
        else None,
    )
    return result


async def sweep(
    target: load.Target,
    pid: int,
    sizes: list[int],
    metrics_url: str | None = None,
    metrics_token: str = "",
) -> list[dict[str, Any]]:
    """Held streams at growing counts: where the event-loop lag stays low, and the CPU
    each stream costs (without ``metrics_url``, as for the bare relay, only the CPU)."""
    rows = []
    for size in sizes:
        run = await hold_streams(target, pid, size, metrics_url, metrics_token)
        rows.append(
            {
                key: run[key]
                for key in (
                    "streams",
                    "completed",
                    "seconds",
                    "cpu_ms_per_stream",
                    "loop_lag_p99_ms_at_most",
                )
            }
            | {"ttft_p50_ms": run["ttft_ms"]["p50"]}
        )
    return rows


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def summarise(
    held: dict[str, Any],
    held_bare: dict[str, Any],
    rows: list[dict[str, Any]],
    bare_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """copilotedge's CPU per held stream against the relay's, at each count, and the
    largest count whose loop-lag p99 stayed within ``LAG_LIMIT_MS`` with every stream
    completed (the lag is read as a histogram bucket's bound, so "within" is exact)."""
    bare_cpu = {r["streams"]: r["cpu_ms_per_stream"] for r in [*bare_rows, held_bare]}
    by_count = {
        str(r["streams"]): _ratio(r["cpu_ms_per_stream"], bare_cpu[r["streams"]])
        for r in [*rows, held]
        if r["streams"] in bare_cpu
    }

    within = [
        r["streams"]
        for r in [*rows, held]
        if r["loop_lag_p99_ms_at_most"] is not None
        and r["loop_lag_p99_ms_at_most"] <= LAG_LIMIT_MS
        and r["completed"] == r["streams"]
    ]
    over = [r["streams"] for r in [*rows, held] if r["streams"] not in within]
    return {
        "cpu_ms_per_stream_vs_bare": _ratio(
            held["cpu_ms_per_stream"], held_bare["cpu_ms_per_stream"]
        ),
        "cpu_ms_per_stream_vs_bare_by_streams": by_count,
        "max_streams_lag_p99_within_50ms": max(within, default=None),
        "min_streams_lag_p99_over_50ms": min(over, default=None),
    }
