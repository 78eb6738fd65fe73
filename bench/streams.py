"""Streamed completions through the proxy against the emulator called directly."""

from __future__ import annotations

from typing import Any

from . import load


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is not above zero
    (an added time to first token within the noise can come out negative)."""
    return round(numerator / denominator, 3) if denominator > 0 else None


async def ttft_and_throughput(
    direct: load.Target,
    bare: load.Target,
    proxies: list[load.Target],
    *,
    requests: int,
    seconds: float,
    peer: load.Target | None = None,
) -> dict[str, Any]:
    """TTFT at concurrency 1 and 50, throughput at 10 and 50, for 1 and 2 processes.

    ``bare`` is a Django view relaying the upstream bytes under the same server and
    middleware: the second baseline, for what copilotedge's own work costs. ``peer``
    (LiteLLM's proxy, when it runs) is measured the same way, as ``"litellm"``.
    """
    one = proxies[:1]
    paths = {"direct": direct, "bare": bare, "proxy": one[0]}
    if peer is not None:
        paths["litellm"] = peer
    result: dict[str, Any] = {name: {} for name in paths} | {"proxy_2_processes": {}}
    for name, target in paths.items():
        result[name]["ttft_c1"] = await load.ttft_sequential(target, requests)
    for concurrency in (10, 50):
        key = f"c{concurrency}"
        for name, target in paths.items():
            result[name][key] = await load.throughput([target], concurrency, seconds)
        if len(proxies) > 1:
            result["proxy_2_processes"][key] = await load.throughput(proxies, concurrency, seconds)
    result["summary"] = summarise(result)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Each path's figures against the direct path, and copilotedge's against its peers'."""
    d, b, p = result["direct"], result["bare"], result["proxy"]
    peer = result.get("litellm")
    summary: dict[str, Any] = {}

    def added(path: dict[str, Any], run: str, q: str) -> float:
        difference: float = path[run]["ttft_ms"][q] - d[run]["ttft_ms"][q]
        return round(difference, 3)

    for q in ("p50", "p95", "p99"):
        summary[f"bare_added_ttft_c1_{q}_ms"] = added(b, "ttft_c1", q)
        summary[f"added_ttft_c1_{q}_ms"] = added(p, "ttft_c1", q)
        summary[f"bare_added_ttft_c50_{q}_ms"] = added(b, "c50", q)
        summary[f"added_ttft_c50_{q}_ms"] = added(p, "c50", q)
        if peer:
            summary[f"litellm_added_ttft_c1_{q}_ms"] = added(peer, "ttft_c1", q)
            summary[f"litellm_added_ttft_c50_{q}_ms"] = added(peer, "c50", q)
    mine = summary["added_ttft_c1_p50_ms"]
    summary["added_ttft_c1_p50_over_bare_ms"] = round(
        mine - summary["bare_added_ttft_c1_p50_ms"], 3
    )
    summary["added_ttft_c1_p50_vs_bare"] = _ratio(mine, summary["bare_added_ttft_c1_p50_ms"])
    if peer:
        summary["added_ttft_c1_p50_vs_litellm"] = _ratio(
            mine, summary["litellm_added_ttft_c1_p50_ms"]
        )
    for concurrency in (10, 50):
        key = f"c{concurrency}"
        base = max(d[key]["per_second"], 1e-9)
        summary[f"throughput_ratio_{key}"] = round(p[key]["per_second"] / base, 3)
        summary[f"bare_throughput_ratio_{key}"] = round(b[key]["per_second"] / base, 3)
        summary[f"proxy_vs_bare_{key}"] = _ratio(p[key]["per_second"], b[key]["per_second"])
        if peer:
            summary[f"litellm_throughput_ratio_{key}"] = round(peer[key]["per_second"] / base, 3)
            summary[f"proxy_vs_litellm_{key}"] = _ratio(
                p[key]["per_second"], peer[key]["per_second"]
            )
        if result["proxy_2_processes"]:
            summary[f"throughput_ratio_{key}_2_processes"] = round(
                result["proxy_2_processes"][key]["per_second"] / base, 3
            )
    return summary
