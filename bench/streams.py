"""Streamed completions through the proxy against the emulator called directly."""

from __future__ import annotations

from typing import Any

from . import load


async def ttft_and_throughput(
    direct: load.Target,
    bare: load.Target,
    proxies: list[load.Target],
    *,
    requests: int,
    seconds: float,
) -> dict[str, Any]:
    """TTFT at concurrency 1 and 50, throughput at 10 and 50, for 1 and 2 processes.

    ``bare`` is a Django view relaying the upstream bytes under the same server and
    middleware: the second baseline, for what copilotedge's own work costs.
    """
    one = proxies[:1]
    result: dict[str, Any] = {"direct": {}, "bare": {}, "proxy": {}, "proxy_2_processes": {}}
    for name, target in (("direct", direct), ("bare", bare), ("proxy", one[0])):
        result[name]["ttft_c1"] = await load.ttft_sequential(target, requests)
    for concurrency in (10, 50):
        key = f"c{concurrency}"
        result["direct"][key] = await load.throughput([direct], concurrency, seconds)
        result["bare"][key] = await load.throughput([bare], concurrency, seconds)
        result["proxy"][key] = await load.throughput(one, concurrency, seconds)
        if len(proxies) > 1:
            result["proxy_2_processes"][f"c{concurrency}"] = await load.throughput(
                proxies, concurrency, seconds
            )
    d, b, p = result["direct"], result["bare"], result["proxy"]
    summary: dict[str, Any] = {}
    for q in ("p50", "p95", "p99"):
        summary[f"bare_added_ttft_c1_{q}_ms"] = round(
            b["ttft_c1"]["ttft_ms"][q] - d["ttft_c1"]["ttft_ms"][q], 3
        )
        summary[f"added_ttft_c1_{q}_ms"] = round(
            p["ttft_c1"]["ttft_ms"][q] - d["ttft_c1"]["ttft_ms"][q], 3
        )
        summary[f"added_ttft_c50_{q}_ms"] = round(
            p["c50"]["ttft_ms"][q] - d["c50"]["ttft_ms"][q], 3
        )
    for concurrency in (10, 50):
        key = f"c{concurrency}"
        base = max(d[key]["per_second"], 1e-9)
        summary[f"throughput_ratio_{key}"] = round(p[key]["per_second"] / base, 3)
        summary[f"bare_throughput_ratio_{key}"] = round(b[key]["per_second"] / base, 3)
        summary[f"proxy_vs_bare_{key}"] = round(
            p[key]["per_second"] / max(b[key]["per_second"], 1e-9), 3
        )
        if result["proxy_2_processes"]:
            summary[f"throughput_ratio_{key}_2_processes"] = round(
                result["proxy_2_processes"][key]["per_second"] / base, 3
            )
    result["summary"] = summary
    return result
