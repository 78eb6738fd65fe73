"""End to end: the official openai SDK and raw httpx against the app under real daphne,
which talks to the Workers AI emulator over loopback."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorServer
from copilotedge.testing.answers import compose
from tests.servers import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "@cf/meta/llama-3.1-8b-instruct"
RUN_MODEL = "@cf/qwen/qwq-32b"
HANG_UP_WITHIN = 1.0  # seconds from the client hanging up to the emulator seeing it


@pytest.fixture(autouse=True)
def usage_written(emulator: EmulatorServer) -> Iterator[None]:
    """Each upstream request is one turn; wait for its usage record before the test ends.

    Otherwise the server would write it after the test database is flushed, and the
    insert would fail on the foreign key of the test's (deleted) key.
    """
    before = len(emulator.app.requests)
    yield
    turns = len(emulator.app.requests) - before
    assert wait_for(lambda: UsageRecord.objects.count() >= turns, 5)


@pytest.fixture
def client(e2e_server: DaphneServer, api_key: tuple[ApiKey, str]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{e2e_server.url}/copilotedge/v1", api_key=api_key[1], max_retries=0
    )


def ask(text: str) -> list[Any]:  # Any: the SDK wants its own TypedDicts
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def logged(emulator: EmulatorServer, tag: str) -> dict[str, Any]:
    """The emulator's log entry of the request whose last message contains ``tag``."""
    entries = [
        entry
        for entry in emulator.app.requests
        if entry["messages"] and tag in str(entry["messages"][-1].get("content"))
    ]
    assert len(entries) == 1, entries
    return entries[0]


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def usage_records() -> list[UsageRecord]:
    # The server writes usage off the response path; give it a moment.
    wait_for(lambda: UsageRecord.objects.exists(), 5)
    return list(UsageRecord.objects.all())


# -- the openai SDK ---------------------------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, RUN_MODEL])
def test_sdk_streaming_with_usage(
    client: openai.OpenAI, emulator: EmulatorServer, model: str
) -> None:
    tag = uuid.uuid4().hex
    messages = ask(f"stream {tag}")
    expected = compose(messages)
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() | expected.usage() == chunks[-1].usage.model_dump()
    entry = logged(emulator, tag)
    assert (entry["outcome"], entry["stream"]) == ("completed", True)
    [record] = usage_records()
    assert (record.outcome, record.token_source) == ("ok", "upstream")
    assert record.completion_tokens == expected.completion_tokens


def test_sdk_non_streaming(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    tag = uuid.uuid4().hex
    messages = ask(f"whole {tag}")
    expected = compose(messages)
    completion = client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == expected.completion_tokens
    assert logged(emulator, tag)["stream"] is False


def test_sdk_max_tokens_reaches_upstream(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    tag = uuid.uuid4().hex
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ask(f"short {tag}"),
        max_tokens=3,
        temperature=0.3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert logged(emulator, tag)["params"]["max_tokens"] == 3


def test_sdk_models_list(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert MODEL in ids and RUN_MODEL in ids


def test_sdk_bad_key(e2e_server: DaphneServer, db: None) -> None:
    client = openai.OpenAI(
        base_url=f"{e2e_server.url}/copilotedge/v1", api_key="ce_not-a-key", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=ask("hi"))
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_sdk_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="@cf/nope/none", messages=ask("hi"))
    assert (caught.value.status_code, caught.value.code) == (404, "model_not_found")
    assert caught.value.param == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_upstream_capacity_error(
    client: openai.OpenAI, emulator: EmulatorServer, stream: bool
) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ask(f"{tag} [[fault:error:429:3040:5]]"),
            stream=stream,
        )
    assert caught.value.status_code == 429
    assert caught.value.code == "upstream_capacity"
    assert caught.value.response.headers["Retry-After"] == "5"
    assert logged(emulator, tag)["status"] == 429


def test_sdk_mid_stream_drop(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    tag = uuid.uuid4().hex
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask(f"{tag} [[fault:drop:3]]"),
        stream=True,
    )
    # The SDK raises on an in-band error frame; what came before it is the partial answer.
    texts = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
            assert chunk.choices[0].finish_reason is None
    assert "".join(texts) == "".join(compose(ask(f"{tag} [[fault:drop:3]]")).tokens[:3])
    assert "ended the answer early" in caught.value.message
    assert logged(emulator, tag)["outcome"] == "dropped"
    [record] = usage_records()
    assert (record.outcome, record.error_code) == ("incomplete", "upstream_incomplete")


# -- raw httpx: hanging up --------------------------------------------------------------


def chat_request(e2e_server: DaphneServer, raw_key: str, text: str) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": f"{e2e_server.url}/copilotedge/v1/chat/completions",
        "headers": {"Authorization": f"Bearer {raw_key}"},
        "json": {"model": MODEL, "messages": ask(text), "stream": True},
    }


def test_hang_up_mid_stream_reaches_upstream(
    e2e_server: DaphneServer, emulator: EmulatorServer, api_key: tuple[ApiKey, str]
) -> None:
    tag = uuid.uuid4().hex
    # 0.2 s a token: the 20-token answer would take 4 s.
    request = chat_request(e2e_server, api_key[1], f"{tag} [[fault:slow:0.2]]")
    with httpx.Client(timeout=10) as http, http.stream(**request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        frames = response.iter_lines()
        first = next(frames)
        assert first.startswith("data: ") and '"role":"assistant"' in first
        while '"content":"Hello' not in (line := next(frames)):
            assert not line.startswith("data: [DONE]")
        response.close()
        hung_up = time.time()
    entry = logged(emulator, tag)
    assert wait_for(lambda: entry["outcome"] is not None, HANG_UP_WITHIN + 1)
    assert entry["outcome"] == "client_disconnected"
    assert entry["ended"] - hung_up < HANG_UP_WITHIN
    assert entry["tokens_sent"] < 10
    [record] = usage_records()
    assert record.outcome == "cancelled"
    assert record.completion_tokens > 0


def test_hang_up_before_the_first_byte_reaches_upstream(
    e2e_server: DaphneServer, emulator: EmulatorServer, api_key: tuple[ApiKey, str]
) -> None:
    tag = uuid.uuid4().hex
    # The emulator holds its response headers back for 30 s.
    request = chat_request(e2e_server, api_key[1], f"{tag} [[fault:hang:30]]")
    with httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.request(**request)
        hung_up = time.time()
    entry = logged(emulator, tag)
    assert wait_for(lambda: entry["outcome"] is not None, HANG_UP_WITHIN + 1)
    assert entry["outcome"] == "client_disconnected"
    assert entry["ended"] - hung_up < HANG_UP_WITHIN
    assert entry["tokens_sent"] == 0
    [record] = usage_records()
    assert (record.outcome, record.completion_tokens) == ("cancelled", 0)


def test_no_stream_is_left_open(e2e_server: DaphneServer, emulator: EmulatorServer) -> None:
    # After the tests above hung up, nothing is still streaming from the emulator.
    assert wait_for(lambda: emulator.app.open_streams == 0, 2)
