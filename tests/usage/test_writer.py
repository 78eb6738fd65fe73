"""Writing the usage ledger: retried writes, no duplicate rows, ``usage_recorded``."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import respx
from django.db.utils import OperationalError
from django.test import AsyncClient

from copilotedge import lifecycle, signals
from copilotedge.models import UsageRecord
from copilotedge.usage import writer as usage_writer
from tests.helpers import OPENAI_URL, openai_chunk, read_stream, sse_body

MODEL = "@cf/meta/llama-3.1-8b-instruct"
UPSTREAM_USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}

pytestmark = pytest.mark.django_db(transaction=True)


def chat_body(**extra: Any) -> str:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra})


async def test_failed_writes_are_retried_without_touching_the_response(
    upstream: respx.MockRouter,
    auth: dict[str, str],
    usage_row: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_batch(records: list[UsageRecord], *args: Any, **kwargs: Any) -> Any:
        raise OperationalError("database is locked")

    real_asave = UsageRecord.asave
    failures = iter([OperationalError("database is locked"), OperationalError("again")])

    async def flaky_asave(self: UsageRecord, *args: Any, **kwargs: Any) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        await real_asave(self, *args, **kwargs)

    # The batch insert fails, then the record's own insert twice, then it lands.
    monkeypatch.setattr(UsageRecord.objects, "bulk_create", broken_batch)
    monkeypatch.setattr(UsageRecord, "asave", flaky_asave)
    upstream.post(OPENAI_URL).respond(
        200, content=sse_body(openai_chunk("Hi"), {"choices": [], "usage": UPSTREAM_USAGE})
    )
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        chat_body(stream=True),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 200
    assert (await read_stream(response))[-1] == "[DONE]"
    await usage_row(outcome="ok", prompt_tokens=11)
    assert caplog.text.count("retrying") == 2


async def test_a_write_that_committed_but_failed_is_not_written_twice(
    upstream: respx.MockRouter,
    auth: dict[str, str],
    usage_row: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_batch(records: list[UsageRecord], *args: Any, **kwargs: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    real_asave = UsageRecord.asave
    calls = 0

    async def lost_reply(self: UsageRecord, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await real_asave(self, *args, **kwargs)
        if calls == 1:  # the row is in, but the client never hears so
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(UsageRecord.objects, "bulk_create", broken_batch)
    monkeypatch.setattr(UsageRecord, "asave", lost_reply)
    flags: list[bool] = []

    def receiver(sender: Any, record: UsageRecord, saved: bool, **kwargs: Any) -> None:
        flags.append(saved)

    usage_writer.usage_recorded.connect(receiver)
    try:
        upstream.post(OPENAI_URL).respond(
            200, json={"choices": [{"message": {"content": "Hi"}}], "usage": UPSTREAM_USAGE}
        )
        response = await AsyncClient().post(
            "/copilotedge/v1/chat/completions",
            chat_body(),
            content_type="application/json",
            headers=auth,
        )
        assert response.status_code == 200
        await usage_row(outcome="ok", prompt_tokens=11)  # exactly one row
    finally:
        usage_writer.usage_recorded.disconnect(receiver)
    assert calls == 2 and flags == [True]
    assert "Could not save" not in caplog.text


async def test_a_write_that_never_lands_is_logged_whole_and_still_signalled(
    upstream: respx.MockRouter,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_batch(records: list[UsageRecord], *args: Any, **kwargs: Any) -> Any:
        raise OperationalError("disk full")

    async def broken_asave(self: UsageRecord, *args: Any, **kwargs: Any) -> None:
        raise OperationalError("disk full")

    monkeypatch.setattr(UsageRecord.objects, "bulk_create", broken_batch)
    monkeypatch.setattr(UsageRecord, "asave", broken_asave)
    signalled: list[tuple[UsageRecord, bool]] = []

    def receiver(sender: Any, record: UsageRecord, saved: bool, **kwargs: Any) -> None:
        signalled.append((record, saved))

    usage_writer.usage_recorded.connect(receiver)
    try:
        upstream.post(OPENAI_URL).respond(
            200, content=sse_body(openai_chunk("Hi"), {"choices": [], "usage": UPSTREAM_USAGE})
        )
        response = await AsyncClient().post(
            "/copilotedge/v1/chat/completions",
            chat_body(stream=True),
            content_type="application/json",
            headers=auth,
        )
        assert (await read_stream(response))[-1] == "[DONE]"
        await lifecycle.drain()
    finally:
        usage_writer.usage_recorded.disconnect(receiver)
    assert await UsageRecord.objects.acount() == 0
    [(record, saved)] = signalled
    assert saved is False
    failure = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "after 3 attempts" in failure.getMessage()
    for column in (
        "request_id",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "outcome",
        "api_key_id",
        "model_served",
        "latency_ms",
    ):
        assert f"'{column}': {getattr(record, column)!r}" in failure.getMessage()


async def test_usage_recorded_receivers_get_the_saved_row_and_one_failing_does_not_stop_others(
    upstream: respx.MockRouter,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[tuple[int | None, bool]] = []

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("billing is down")

    async def billing(sender: Any, record: UsageRecord, saved: bool, **kwargs: Any) -> None:
        received.append((record.pk, saved))

    # Connected where the README tells a site's billing to find it.
    signals.usage_recorded.connect(broken)
    signals.usage_recorded.connect(billing)
    try:
        upstream.post(OPENAI_URL).respond(
            200, json={"choices": [{"message": {"content": "Hi"}}], "usage": UPSTREAM_USAGE}
        )
        response = await AsyncClient().post(
            "/copilotedge/v1/chat/completions",
            chat_body(),
            content_type="application/json",
            headers=auth,
        )
        assert response.status_code == 200
        await lifecycle.drain()
    finally:
        signals.usage_recorded.disconnect(broken)
        signals.usage_recorded.disconnect(billing)
    row = await UsageRecord.objects.aget()
    assert received == [(row.pk, True)]
    assert "billing is down" in caplog.text
