"""What one server tool step costs us: a turn that runs a tool against plain upstream calls.

In one process and one event loop, against the emulator in a process of its own on
loopback (no token delay),
interleaved round after round:

- ``raw step 1`` and ``raw step 2``: the two upstream calls a tool turn makes, sent with
  an ``httpx.AsyncClient`` straight to the emulator, streamed to the end (the same bodies
  the turn sent: the user's ``CALL:whoami{}``, then that plus the call and its result);
- ``plain turn``: a :class:`~copilotedge.chat.turn.Turn` with step 1's request and no
  server tools (the emulator's tool call goes back to the client);
- ``tool turn``: the same turn with the demo's ``whoami`` as a server tool: step 1, the
  tool run (a sync ORM-free function, in a thread), step 2.

Each turn is a signed-in user's, stored (conversation, ledger), or with ``--anonymous``
one that stores no conversation; the background work is drained between rounds, outside
the timings (but a stored turn waits for its answer's save, as every face does).
Reported: medians and p95 in ms, and

- ``tool turn - (raw 1 + raw 2)``: everything of ours in a tool turn;
- ``tool turn - plain turn - raw 2``: what the tool step itself adds (its loop, the tool
  run, the second step's setup), beyond the upstream call it needs.

``python -m bench.tools [--rounds 300] [--anonymous]``; prints a table and writes
``bench/results/tools.json`` (``tools-anonymous.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from . import processes

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "@cf/meta/llama-3.1-8b-instruct"
PROMPT = [{"role": "user", "content": "Who am I? CALL:whoami{}"}]


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1000, 3),
        "p95": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3),
    }


async def _measure(rounds: int, warmup: int, api_base: str, anonymous: bool) -> dict[str, Any]:
    import httpx
    from django.contrib.auth import get_user_model

    from copilotedge import lifecycle
    from copilotedge.auth import Principal
    from copilotedge.chat import faces
    from copilotedge.chat.turn import Turn
    from copilotedge.chat.types import ChatRequest
    from copilotedge.tools import get_tool

    user = await get_user_model().objects.aget(username="bench")
    # Anonymous turns store no conversation: the turn's own cost without the database's.
    principal = Principal(ip="127.0.0.1") if anonymous else Principal(user=user)
    whoami = get_tool("project.tools.whoami")
    url = f"{api_base}/accounts/bench/ai/v1/chat/completions"

    async def turn(tools: bool) -> Turn:
        request = ChatRequest(model=MODEL, messages=list(PROMPT), stream=True)
        made = Turn(request, principal, "python", server_tools=[whoami] if tools else ())
        await faces.aopen(made)
        async for _ in made.batches():
            pass
        await made.wait_until_saved()
        return made

    # The bodies of the tool turn's two upstream calls, as it sent them.
    sample = await turn(True)
    tools_offered = [whoami.definition()]
    first = {"model": MODEL, "messages": PROMPT, "tools": tools_offered, "stream": True}
    second = {**first, "messages": sample.request.messages}
    await lifecycle.drain()

    times: dict[str, list[float]] = {k: [] for k in ("raw1", "raw2", "plain", "tool")}
    async with httpx.AsyncClient(headers={"Authorization": "Bearer bench"}) as client:

        async def raw(body: dict[str, Any]) -> None:
            async with client.stream("POST", url, json=body) as response:
                async for _ in response.aiter_bytes():
                    pass

        for number in range(warmup + rounds):
            timed = {
                "raw1": lambda: raw(first),
                "raw2": lambda: raw(second),
                "plain": lambda: turn(False),
                "tool": lambda: turn(True),
            }
            for name, run in timed.items():
                started = time.perf_counter()
                await run()
                elapsed = time.perf_counter() - started
                if number >= warmup:
                    times[name].append(elapsed)
                await lifecycle.drain()
    rounds_of = zip(times["tool"], times["plain"], times["raw1"], times["raw2"], strict=True)
    tool_over_raw, step_cost = [], []
    for tool, plain, raw1, raw2 in rounds_of:
        tool_over_raw.append(tool - raw1 - raw2)
        step_cost.append(tool - plain - raw2)
    return {
        "rounds": rounds,
        "stored": not anonymous,
        "raw step 1": _ms(times["raw1"]),
        "raw step 2": _ms(times["raw2"]),
        "plain turn": _ms(times["plain"]),
        "tool turn": _ms(times["tool"]),
        "tool turn - (raw 1 + raw 2)": _ms(tool_over_raw),
        "tool turn - plain turn - raw 2": _ms(step_cost),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--anonymous", action="store_true", help="anonymous turns: no conversation is stored"
    )
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="copilotedge-bench-tools-")
    port = processes.free_port()
    # Its own process, as a real upstream is: in this one it would take the GIL from the
    # turn it answers and bill its time to ours.
    emulator = processes.emulator_args(port, tokens=20, token_delay=0)
    with processes.running(emulator, port, dict(os.environ)):
        env = processes.site_env(port, f"sqlite:///{tmp}/bench.sqlite3")
        processes.prepare_database(env)
        os.environ.update(env)
        import django

        django.setup()
        api_base = f"http://127.0.0.1:{port}/client/v4"
        result = asyncio.run(_measure(args.rounds, args.warmup, api_base, args.anonymous))
    RESULTS.mkdir(exist_ok=True)
    name = "tools-anonymous.json" if args.anonymous else "tools.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'':34} {'p50 ms':>9} {'p95 ms':>9}")
    for name, value in result.items():
        if isinstance(value, dict):
            print(f"{name:34} {value['p50']:9.3f} {value['p95']:9.3f}")


if __name__ == "__main__":
    main()
