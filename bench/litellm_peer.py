"""LiteLLM's proxy as a peer in the ``streams`` section, against the same emulator.

LiteLLM is never a project dependency: it is installed on first use into its own venv
under ``bench/.cache`` (git-ignored) with the machine's ``python3``. It runs with one
worker, the master key as its only API key, no database, no telemetry and no spend logs,
so that it starts and answers offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import load

CACHE = Path(__file__).resolve().parent / ".cache"
VENV = CACHE / "litellm-venv"
#: Releases that install on Python 3.11 and start with the configuration below.
REQUIREMENT = "litellm[proxy]>=1.100,<1.109"
MASTER_KEY = "sk-bench0123456789abcdef0123456789abcdef0123456789abcdef"
#: Seconds LiteLLM's proxy may take to import and start listening (about 25 on a busy
#: 2-core machine).
STARTUP_TIMEOUT = 180.0
#: Offline: no model-price download, no Hugging Face tokenizer lookup (LiteLLM counts
#: the streamed tokens itself; it falls back to its bundled tiktoken), no telemetry.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def install() -> Path:
    """The venv's ``litellm`` command; creates the venv and installs LiteLLM on first use.

    Raises ``RuntimeError`` with pip's last lines when the install fails.
    """
    executable = VENV / "bin" / "litellm"
    marker = VENV / ".requirement"
    if executable.exists() and marker.exists() and marker.read_text() == REQUIREMENT:
        return executable
    python = shutil.which("python3") or sys.executable
    subprocess.run([python, "-m", "venv", "--clear", str(VENV)], check=True)
    print(f"Installing {REQUIREMENT} into {VENV} (once; a few minutes)...", flush=True)
    pip = subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", REQUIREMENT],
        capture_output=True,
        text=True,
    )
    if pip.returncode or not executable.exists():
        tail = [line for line in pip.stderr.splitlines() if not line.startswith("WARNING")]
        reason = " / ".join(line[:200] for line in tail[-2:])
        raise RuntimeError(f"pip install {REQUIREMENT!r} failed: {reason}")
    marker.write_text(REQUIREMENT)
    return executable


#: The deployment's name upstream. LiteLLM counts a streamed answer's tokens itself, with
#: a tokenizer chosen by this name: one with "llama-3" in it makes every request look
#: up a Hugging Face tokenizer, which offline fails and falls back to tiktoken each time
#: (online it is downloaded once). A neutral name takes tiktoken directly. The emulator
#: answers every model name alike.
UPSTREAM_MODEL = "workers-ai-emulator"


def config(emulator_port: int) -> dict[str, object]:
    """One OpenAI-compatible model entry, named as the load generator's requests name it,
    pointing at the emulator's OpenAI-compatible base (where copilotedge points too)."""
    return {
        "model_list": [
            {
                "model_name": load.BODY["model"],
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": f"http://127.0.0.1:{emulator_port}/client/v4/accounts/bench/ai/v1",
                    "api_key": "bench",
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
        "general_settings": {
            "master_key": MASTER_KEY,
            "disable_spend_logs": True,
            # Ask the upstream for the stream's usage, as copilotedge does.
            "always_include_stream_usage": True,
        },
    }


def command(executable: Path, port: int, emulator_port: int, directory: Path) -> list[str]:
    """The proxy's command line, with its configuration written into ``directory``.

    JSON is YAML, so the configuration needs no YAML writer here.
    """
    path = directory / "litellm.yaml"
    path.write_text(json.dumps(config(emulator_port), indent=2))
    return [
        str(executable),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        # As for uvicorn in bench.processes: an idle client connection is not closed
        # between the load generator's sequential warm-up requests and its run.
        "--keepalive_timeout",
        "120",
    ]


def environment() -> dict[str, str]:
    """A clean environment: nothing of the bench's (``DATABASE_URL`` would turn on
    LiteLLM's database), only what a process needs and the offline switches."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ} | OFFLINE_ENV


def target(port: int) -> load.Target:
    return load.Target(
        "litellm",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"Authorization": f"Bearer {MASTER_KEY}"},
    )
