"""Token estimates of a prompt: exact for a usual prompt, bounded work for a huge one."""

from __future__ import annotations

from typing import Any

import pytest

from copilotedge.chat import token_estimates
from copilotedge.chat.token_estimates import EXACT_CHARS, SAMPLE_CHARS, estimate_prompt_tokens

TEXT = "Hello world, this is 123 text! "


def exact(messages: list[dict[str, Any]]) -> int:
    return (
        sum(
            token_estimates.TOKENS_PER_MESSAGE + token_estimates.estimate_tokens(m["content"])
            for m in messages
        )
        + token_estimates.REPLY_PRIMING
    )


def test_a_usual_prompt_is_estimated_exactly() -> None:
    messages = [{"role": "user", "content": TEXT * 20}, {"role": "assistant", "content": "ok"}]
    assert estimate_prompt_tokens(messages) == exact(messages)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": (TEXT * 40_000)[: 1 << 20]}],
        [{"role": "user", "content": TEXT * 70} for _ in range(500)],
    ],
    ids=["one huge message", "many long messages"],
)
def test_a_huge_prompt_costs_bounded_work(monkeypatch: pytest.MonkeyPatch, messages: Any) -> None:
    measured = []
    estimate = token_estimates.estimate_tokens

    def counted(text: str) -> int:
        measured.append(len(text))
        return estimate(text)

    monkeypatch.setattr(token_estimates, "estimate_tokens", counted)
    estimated = estimate_prompt_tokens(messages)
    assert sum(measured) <= EXACT_CHARS + SAMPLE_CHARS * len(messages)
    monkeypatch.undo()
    # Extrapolated at the densest rate seen: close, and high rather than low.
    assert exact(messages) * 0.99 <= estimated <= exact(messages) * 1.1


def test_a_growing_prompt_estimate_is_the_whole_prompts() -> None:
    messages = [{"role": "user", "content": "Who am I? " * 50}]
    params = {"tools": [{"type": "function", "function": {"name": "whoami"}}]}
    step = [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "whoami", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "alice " * 30},
    ]  # fmt: skip
    growing = token_estimates.PromptEstimate(messages, params)
    assert growing.tokens == estimate_prompt_tokens(messages, params)
    growing.add(step)
    assert growing.tokens == estimate_prompt_tokens([*messages, *step], params)
