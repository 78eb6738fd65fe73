"""Running tool calls: what the model reads back for each way a call can end, and metrics."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.test import override_settings
from prometheus_client import REGISTRY

from copilotedge.auth import Principal
from copilotedge.tools import (
    ApprovalDeferred,
    ToolCallRequest,
    ToolContext,
    arun,
    get_tool,
    run_step,
)
from tests import sample_tools

pytestmark = pytest.mark.django_db(transaction=True)


def context(user, call_id="call_1"):
    return ToolContext(user=user, principal=Principal(user=user), tool_call_id=call_id)


async def run(name, arguments="{}", user=None, approve=None, call_id="call_1"):
    call = ToolCallRequest(call_id, name, arguments)
    return await arun(get_tool(name), call, context(user, call_id), approve)


def calls_counted(tool, outcome):
    value = REGISTRY.get_sample_value(
        "copilotedge_tool_calls_total", {"tool": tool, "outcome": outcome}
    )
    return value or 0


async def test_a_sync_tool_runs_as_the_user(user):
    result = await run("caller", user=user)
    assert (result.content, result.outcome, result.tool_call_id) == ("alice", "ok", "call_1")
    assert result.message() == {"role": "tool", "tool_call_id": "call_1", "content": "alice"}


async def test_arguments_are_validated_and_defaults_apply():
    assert (await run("repeat", '{"text": "hi"}')).content == "hi hi"
    assert (await run("repeat", '{"text": "hi", "times": "3"}')).content == "hi hi hi"
    bad = await run("repeat", '{"times": "x", "extra": 1}')
    assert bad.outcome == "invalid"
    assert "text: Field required" in bad.content
    assert "times: Input should be a valid integer" in bad.content
    assert "extra: Extra inputs are not permitted" in bad.content
    assert (await run("repeat", "{oops")).outcome == "invalid"
    assert (await run("repeat", "[1]")).content == "The arguments must be a JSON object."


async def test_non_text_results_are_json(user):
    await sync_to_async(user.user_permissions.add)(
        await Permission.objects.aget(codename="view_usagerecord")
    )
    result = await run("staff_secret", user=user)
    assert json.loads(result.content) == {"secret": 42}


async def test_a_user_without_the_permission_gets_a_refusal(user, other_user):
    before = calls_counted("staff_secret", "forbidden")
    result = await run("staff_secret", user=other_user)
    assert result.outcome == "forbidden"
    assert result.content == "Permission denied: this user may not use the tool 'staff_secret'."
    assert (await run("staff_secret", user=None)).outcome == "forbidden"
    assert calls_counted("staff_secret", "forbidden") == before + 2
    assert (await run("alice_only", user=user)).content == "hello alice"
    assert (await run("alice_only", user=other_user)).outcome == "forbidden"


async def test_an_exception_is_told_without_its_details(caplog):
    before = calls_counted("explode", "error")
    with caplog.at_level(logging.ERROR, logger="copilotedge.tools.executor"):
        result = await run("explode")
    assert (result.outcome, result.content) == (
        "error",
        "The tool 'explode' failed (RuntimeError).",
    )
    assert "internal details" in caplog.text
    assert calls_counted("explode", "error") == before + 1
    told = await run("refuse")
    assert told.content == "The tool 'refuse' failed: the archive is closed on Sundays"


async def test_a_timeout_is_told_to_the_model():
    result = await run("too_slow")
    assert (result.outcome, result.content) == (
        "timeout",
        "The tool 'too_slow' timed out after 0.2 seconds.",
    )
    assert 0.2 <= result.seconds < 2


async def test_a_confirmed_call_runs_only_when_approved():
    asked = []

    async def approve(call):
        asked.append(call.id)
        return call.id == "yes"

    assert (await run("delete_note", '{"note": "a"}', approve=approve, call_id="yes")).content == (
        "deleted a"
    )
    denied = await run("delete_note", '{"note": "a"}', approve=approve, call_id="no")
    assert denied.outcome == "denied"
    assert "did not approve" in denied.content
    assert asked == ["yes", "no"]
    assert (await run("delete_note", '{"note": "a"}')).outcome == "denied"


async def test_an_approval_deferred_to_a_later_request_ends_the_call_without_a_result(user):
    async def later(call):
        raise ApprovalDeferred

    before = calls_counted("archive_note", "deferred")
    sample_tools.archived.clear()
    result = await run("archive_note", '{"note": "a"}', user=user, approve=later)
    assert (result.outcome, result.content) == ("deferred", "")
    assert sample_tools.archived == []
    assert calls_counted("archive_note", "deferred") == before + 1


@override_settings(COPILOTEDGE_TOOL_CONFIRM_TIMEOUT=0.1)
async def test_no_answer_within_the_confirm_timeout_denies():
    async def never(call):
        await asyncio.sleep(30)
        return True

    assert (await run("delete_note", '{"note": "a"}', approve=never)).outcome == "denied"


async def test_one_steps_calls_run_concurrently_and_keep_their_order():
    calls = [
        (get_tool("too_slow"), ToolCallRequest("a", "too_slow", "{}")),
        (get_tool("too_slow"), ToolCallRequest("b", "too_slow", "{}")),
        (get_tool("repeat"), ToolCallRequest("c", "repeat", '{"text": "x"}')),
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await run_step(calls, lambda call: context(None, call.id))
    assert loop.time() - started < 0.39
    assert [(r.tool_call_id, r.outcome) for r in results] == [
        ("a", "timeout"),
        ("b", "timeout"),
        ("c", "ok"),
    ]


async def test_cancelling_a_step_cancels_its_running_tools():
    before = calls_counted("wait_forever", "cancelled")
    calls = [(get_tool("wait_forever"), ToolCallRequest("w1", "wait_forever", "{}"))]
    task = asyncio.ensure_future(run_step(calls, lambda call: context(None, call.id)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "w1" in sample_tools.cancelled_waits
    assert calls_counted("wait_forever", "cancelled") == before + 1
