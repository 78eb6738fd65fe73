"""The benchmark's Markdown table and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _streams(s: dict[str, Any]) -> list[str]:
    d, b, p, p2 = s["direct"], s["bare"], s["proxy"], s["proxy_2_processes"]
    summary = s["summary"]
    rows = [
        _row(
            "streams",
            "direct emulator",
            "bare Django relay",
            "copilotedge, 1 process",
            "copilotedge, 2 processes",
            "copilotedge vs direct",
            "bare vs direct",
        ),
        _row(*["---"] * 7),
    ]
    for q in ("p50", "p95", "p99"):
        rows.append(
            _row(
                f"TTFT {q} ms, concurrency 1",
                d["ttft_c1"]["ttft_ms"][q],
                b["ttft_c1"]["ttft_ms"][q],
                p["ttft_c1"]["ttft_ms"][q],
                "",
                f"+{summary[f'added_ttft_c1_{q}_ms']} ms",
                f"+{summary[f'bare_added_ttft_c1_{q}_ms']} ms",
            )
        )
    for q in ("p50", "p95", "p99"):
        rows.append(
            _row(
                f"TTFT {q} ms, concurrency 50",
                d["c50"]["ttft_ms"][q],
                b["c50"]["ttft_ms"][q],
                p["c50"]["ttft_ms"][q],
                p2.get("c50", {}).get("ttft_ms", {}).get(q, ""),
                f"+{summary[f'added_ttft_c50_{q}_ms']} ms",
                "",
            )
        )
    for c in (10, 50):
        key = f"c{c}"
        two = summary.get(f"throughput_ratio_{key}_2_processes")
        rows.append(
            _row(
                f"completions/s, concurrency {c}",
                d[key]["per_second"],
                b[key]["per_second"],
                p[key]["per_second"],
                p2.get(key, {}).get("per_second", ""),
                f"{summary[f'throughput_ratio_{key}'] * 100:.1f}%"
                + (f" (2 processes: {two * 100:.1f}%)" if two is not None else ""),
                f"{summary[f'bare_throughput_ratio_{key}'] * 100:.1f}%",
            )
        )
    errors = sum(v.get("errors", 0) for part in (d, b, p, p2) for v in part.values())
    rows.append(_row("errors", "", "", "", "", errors, ""))
    return rows


def _capacity(c: dict[str, Any]) -> list[str]:
    mine, bare = c["copilotedge"], c["bare"]
    rows = [
        _row(f"{mine['streams']} held streams, one process", "copilotedge", "bare Django relay"),
        _row("---", "---", "---"),
    ]
    for key in (
        "completed",
        "errors",
        "seconds",
        "cpu_ms_per_stream",
        "rss_growth_per_stream_kib",
        "threads_peak",
        "loop_lag_p99_ms_at_most",
    ):
        rows.append(_row(key, mine.get(key), bare.get(key)))
    rows.append(
        _row(
            "ttft p50 / p99 ms",
            *(f"{r['ttft_ms']['p50']} / {r['ttft_ms']['p99']}" for r in (mine, bare)),
        )
    )
    if c.get("sweep"):
        rows += [
            "",
            _row(
                "held streams",
                "completed",
                "seconds",
                "CPU ms/stream",
                "TTFT p50 ms",
                "loop lag p99 ms (at most)",
            ),
        ]
        rows.append(_row(*["---"] * 6))
        for r in c["sweep"] + [mine]:
            ttft = r["ttft_p50_ms"] if "ttft_p50_ms" in r else r["ttft_ms"]["p50"]
            rows.append(
                _row(
                    r["streams"],
                    r["completed"],
                    r["seconds"],
                    r["cpu_ms_per_stream"],
                    ttft,
                    r["loop_lag_p99_ms_at_most"],
                )
            )
    return rows


def _flat(name: str, data: dict[str, Any]) -> list[str]:
    rows = [_row(name, "value"), _row("---", "---")]
    rows.extend(_row(k, v) for k, v in data.items())
    return rows


def markdown(result: dict[str, Any]) -> str:
    parts: list[list[str]] = []
    if "streams" in result:
        parts.append(_streams(result["streams"]))
    if "capacity" in result:
        parts.append(_capacity(result["capacity"]))
    for name in ("websocket", "ratelimit", "admin"):
        if name in result:
            parts.append(_flat(name, result[name]))
    m = result["machine"]
    footer = f"{m['cpus']} CPUs, Python {m['python']}, {m['platform']}, {m['when']}"
    return "\n\n".join("\n".join(rows) for rows in parts) + f"\n\n{footer}"


def plot(result: dict[str, Any], path: Path) -> None:
    """TTFT p50 and throughput against concurrency, for each path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.get("streams")
    if not s:
        return
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4))
    for name, label in (
        ("direct", "emulator direct"),
        ("bare", "bare Django relay"),
        ("proxy", "copilotedge, 1 process"),
        ("proxy_2_processes", "copilotedge, 2 processes"),
    ):
        runs = s[name]
        xs = [c for c in (1, 10, 50) if (f"c{c}" if c > 1 else "ttft_c1") in runs]
        key = {1: "ttft_c1", 10: "c10", 50: "c50"}
        lat.plot(xs, [runs[key[c]]["ttft_ms"]["p50"] for c in xs], marker="o", label=label)
        tx = [c for c in (10, 50) if f"c{c}" in runs]
        thr.plot(tx, [runs[f"c{c}"]["per_second"] for c in tx], marker="o", label=label)
    lat.set(xlabel="concurrency", ylabel="time to first token p50 (ms)", xscale="log")
    thr.set(xlabel="concurrency", ylabel="streamed completions / s", yscale="log")
    for ax in (lat, thr):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
