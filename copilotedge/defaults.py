"""The app's default tables and values: the model, upstream routes, prices and agents.

:mod:`copilotedge.conf` falls back to these where a site sets nothing; a site that wants
to extend a table can import it from here (``{**DEFAULT_PRICES, "my-model": (...)}``).
"""

from __future__ import annotations

from typing import Any

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_MODEL = "@cf/meta/llama-3.1-8b-instruct"

# Glob -> upstream route. First match wins; "openai" is the OpenAI-compatible
# /ai/v1/chat/completions, "run" is the native /ai/run/{model}.
DEFAULT_ROUTES: dict[str, str] = {
    "@cf/meta/*": "openai",
    "@cf/mistral/*": "openai",
    "@cf/google/*": "openai",
    "*": "run",
}

# USD per million tokens (input, output), from the Workers AI pricing page.
DEFAULT_PRICES: dict[str, tuple[str, str]] = {
    "@cf/meta/llama-3.1-8b-instruct": ("0.282", "0.827"),
    "@cf/meta/llama-3.1-8b-instruct-fast": ("0.045", "0.384"),
    "@cf/meta/llama-3.2-1b-instruct": ("0.027", "0.201"),
    "@cf/meta/llama-3.2-3b-instruct": ("0.051", "0.335"),
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast": ("0.293", "2.253"),
    "@cf/meta/llama-4-scout-17b-16e-instruct": ("0.270", "0.850"),
    "@cf/mistral/mistral-7b-instruct-v0.1": ("0.110", "0.190"),
    "@cf/mistralai/mistral-small-3.1-24b-instruct": ("0.351", "0.555"),
    "@cf/google/gemma-3-12b-it": ("0.345", "0.556"),
    "@cf/qwen/qwq-32b": ("0.660", "1.000"),
    "@cf/qwen/qwen2.5-coder-32b-instruct": ("0.660", "1.000"),
    "@cf/deepseek-ai/deepseek-r1-distill-qwen-32b": ("0.497", "4.881"),
}

# Agent id -> name, description, and optionally model (default: COPILOTEDGE_MODEL),
# system_prompt and params (temperature, max_tokens, ...) sent with every run of it.
DEFAULT_AGENTS: dict[str, dict[str, Any]] = {
    "default": {
        "name": "default",
        "description": "A helpful assistant served by Cloudflare Workers AI.",
    },
}
