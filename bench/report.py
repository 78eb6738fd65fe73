"""The benchmark's Markdown table and plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _cell(value: Any, spread: Any = None, unit: str = "") -> str:
    """A figure, with the range of its runs beside it when the section ran more than once."""
    if value is None or value == "":
        return ""
    text = f"{value}{unit}"
    if isinstance(spread, list) and spread[0] != spread[1]:
        text += f" ({spread[0]} to {spread[1]})"
    return text


def _at(tree: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


#: Path columns of the streams table: result key and heading.
_PATHS = (
    ("direct", "direct emulator"),
    ("bare", "bare Django relay"),
    ("litellm", "LiteLLM proxy, 1 worker"),
    ("proxy", "copilotedge, 1 process"),
    ("proxy_2_processes", "copilotedge, 2 processes"),
)


#: Prefix of a path's figures in the streams summary.
_PREFIX = {"bare": "bare_", "litellm": "litellm_", "proxy": ""}


def _streams(s: dict[str, Any]) -> list[str]:
    spread = s.get("spread", {})
    summary, summary_spread = s["summary"], spread.get("summary", {})
    paths = [key for key, _ in _PATHS if s.get(key)]

    def figure(key: str, run: str, *leaf: str) -> str:
        return _cell(_at(s, key, run, *leaf), _at(spread, key, run, *leaf))

    def derived(name: str, unit: str = "", percent: bool = False, sign: str = "") -> str:
        value, span = summary.get(name), summary_spread.get(name)
        if percent and value is not None:
            value = round(value * 100, 1)
            span = [round(v * 100, 1) for v in span] if isinstance(span, list) else None
        text = _cell(value, span, unit)
        return f"{sign}{text}" if text and sign and not text.startswith("-") else text

    def added(key: str, run: str, q: str) -> str:
        if key not in _PREFIX:
            return ""
        return derived(f"{_PREFIX[key]}added_ttft_{run}_{q}_ms", " ms", sign="+")

    def share(key: str, c: int) -> str:
        name = (
            f"throughput_ratio_c{c}_2_processes"
            if key == "proxy_2_processes"
            else f"{_PREFIX.get(key, '')}throughput_ratio_c{c}"
        )
        return "" if key == "direct" else derived(name, "%", percent=True)

    runs = f", median of {s['runs']} runs (range)" if s.get("runs", 1) > 1 else ""
    titles = dict(_PATHS)
    rows = [
        _row(f"streams{runs}", *(titles[key] for key in paths)),
        _row(*["---"] * (len(paths) + 1)),
    ]
    for run, c in (("ttft_c1", 1), ("c50", 50)):
        for q in ("p50", "p95", "p99"):
            rows.append(
                _row(
                    f"TTFT {q} ms, concurrency {c}",
                    *(figure(key, run, "ttft_ms", q) for key in paths),
                )
            )
        for q in ("p50", "p99"):
            rows.append(
                _row(
                    f"added TTFT {q}, concurrency {c}",
                    *(added(key, "c1" if c == 1 else run, q) for key in paths),
                )
            )
    for c in (10, 50):
        rows.append(
            _row(
                f"completions/s, concurrency {c}",
                *(figure(key, f"c{c}", "per_second") for key in paths),
            )
        )
        rows.append(_row(f"share of direct, concurrency {c}", *(share(key, c) for key in paths)))
    rows.append(
        _row(
            "errors",
            *(
                sum(v.get("errors", 0) for v in s[key].values() if isinstance(v, dict))
                for key in paths
            ),
        )
    )
    return [*rows, "", *_ratios(s, derived)]


def _ratios(s: dict[str, Any], derived: Callable[..., str]) -> list[str]:
    """copilotedge against the bare relay and against LiteLLM, with the targets."""
    rows = [_row("copilotedge against its peers", "value", "target"), _row("---", "---", "---")]
    for c in (10, 50):
        rows.append(
            _row(f"completions/s, copilotedge/relay, c{c}", derived(f"proxy_vs_bare_c{c}"), "≥ 0.6")
        )
    rows.append(
        _row(
            "added TTFT p50, c1, copilotedge minus relay",
            derived("added_ttft_c1_p50_over_bare_ms", " ms"),
            "≤ 2 ms",
        )
    )
    rows.append(
        _row("added TTFT p50, c1, copilotedge/relay", derived("added_ttft_c1_p50_vs_bare"), "")
    )
    if s.get("litellm"):
        for c in (10, 50):
            rows.append(
                _row(
                    f"completions/s, copilotedge/LiteLLM, c{c}",
                    derived(f"proxy_vs_litellm_c{c}"),
                    "≥ 6",
                )
            )
        rows.append(
            _row(
                "added TTFT p50, c1, copilotedge/LiteLLM",
                derived("added_ttft_c1_p50_vs_litellm"),
                "≤ 0.25",
            )
        )
    return rows


def _capacity(c: dict[str, Any]) -> list[str]:
    mine, bare = c["copilotedge"], c["bare"]
    summary = c.get("summary", {})
    rows = [
        _row(f"{mine['streams']} held streams, one process", "copilotedge", "bare Django relay"),
        _row("---", "---", "---"),
    ]
    for key in (
        "completed",
        "errors",
        "seconds",
        "cpu_ms_per_stream",
        "idle_cpu_ms_per_second",
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
        bare_cpu = {r["streams"]: r["cpu_ms_per_stream"] for r in c.get("bare_sweep", [])}
        bare_cpu[bare["streams"]] = bare["cpu_ms_per_stream"]
        ratios = summary.get("cpu_ms_per_stream_vs_bare_by_streams", {})
        rows += [
            "",
            _row(
                "held streams",
                "completed",
                "seconds",
                "CPU ms/stream",
                "relay CPU ms/stream",
                "CPU copilotedge/relay",
                "TTFT p50 ms",
                "loop lag p99 ms (at most)",
            ),
        ]
        rows.append(_row(*["---"] * 8))
        for r in c["sweep"] + [mine]:
            ttft = r["ttft_p50_ms"] if "ttft_p50_ms" in r else r["ttft_ms"]["p50"]
            rows.append(
                _row(
                    r["streams"],
                    r["completed"],
                    r["seconds"],
                    r["cpu_ms_per_stream"],
                    bare_cpu.get(r["streams"], ""),
                    _cell(ratios.get(str(r["streams"]))),
                    ttft,
                    r["loop_lag_p99_ms_at_most"],
                )
            )
    if summary:
        rows += [
            "",
            _row("held streams, copilotedge against the relay", "value", "target"),
            _row("---", "---", "---"),
            _row(
                f"CPU per held stream, copilotedge/relay, {mine['streams']} streams",
                _cell(summary.get("cpu_ms_per_stream_vs_bare")),
                "≤ 1.3",
            ),
            _row(
                "most held streams with loop lag p99 ≤ 50 ms",
                _cell(summary.get("max_streams_lag_p99_within_50ms")),
                "twice the baseline's",
            ),
            _row(
                "fewest held streams with loop lag p99 over 50 ms",
                _cell(summary.get("min_streams_lag_p99_over_50ms")),
                "",
            ),
        ]
    return rows


def _flat(name: str, data: dict[str, Any]) -> list[str]:
    rows = [_row(name, "value"), _row("---", "---")]
    rows.extend(_row(k, v) for k, v in data.items())
    return rows


def markdown(result: dict[str, Any]) -> str:
    parts: list[list[str]] = []
    if "streams" in result:
        parts.append(_streams(result["streams"]))
    if "skipped" in result.get("litellm", {}):
        parts.append([f"LiteLLM proxy not measured: {result['litellm']['skipped']}"])
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
    for name, label in _PATHS:
        runs = s.get(name)
        if not runs:
            continue
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
