"""End to end: the openai SDK names an agent (``model: "agent:<id>"``) and its server
tools run under real daphne, against the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorServer
from tests.servers import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def tools_server(emulator: EmulatorServer, django_db_setup: None) -> Iterator[DaphneServer]:
    server = DaphneServer(
        {
            "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
            "COPILOTEDGE_ACCOUNT_ID": "e2e",
            "COPILOTEDGE_API_TOKEN": "e2e",
            "COPILOTEDGE_AGENTS": {
                "default": {"name": "default"},
                "helper": {"name": "helper", "tools": ["tests.sample_tools.caller"]},
            },
        }
    ).start()
    try:
        yield server
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def client(tools_server: DaphneServer, api_key: tuple[ApiKey, str]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{tools_server.url}/copilotedge/v1", api_key=api_key[1], max_retries=0
    )


def test_the_sdk_names_an_agent_and_gets_the_final_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="agent:helper", messages=[{"role": "user", "content": "Who am I? CALL:caller{}"}]
    )
    choice = completion.choices[0]
    assert choice.message.content is not None
    assert choice.message.content.startswith("Tool result: alice")
    assert not choice.message.tool_calls  # the server's own calls stay invisible
    assert choice.finish_reason == "stop"


def test_the_sdk_streams_only_the_final_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="agent:helper",
        messages=[{"role": "user", "content": "CALL:caller{}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Tool result: alice")
    assert not [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens > 0


def test_a_plain_model_name_keeps_pass_through(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="@cf/meta/llama-3.1-8b-instruct",
        messages=[{"role": "user", "content": "CALL:caller{}"}],
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert call.function.name == "caller"  # handed to the client, not run
    assert UsageRecord.objects.filter(tool_calls__gt=0).count() == 0


def test_an_unknown_agent_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="agent:nobody", messages=[{"role": "user", "content": "hi"}]
        )


def test_the_sdk_sees_each_tool_step_when_it_asks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="agent:helper",
        messages=[{"role": "user", "content": "Who am I? CALL:caller{}"}],
        stream=True,
        stream_options={"include_tool_steps": True},  # type: ignore[typeddict-unknown-key]
    )
    chunks = list(stream)
    steps = [c.model_extra["copilotedge_tool_step"] for c in chunks if not c.choices]
    call, result = steps
    assert call == {
        "step": 1,
        "type": "call",
        "tool_call_id": call["tool_call_id"],
        "name": "caller",
        "arguments": "{}",
    }
    assert result == {**call, "type": "result", "content": "alice", "outcome": "ok"}
    # The steps come before the answer, which still streams as usual.
    first_text = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert chunks.index(next(c for c in chunks if not c.choices)) < first_text
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Tool result: alice")
    assert chunks[-1].choices[0].finish_reason == "stop"
