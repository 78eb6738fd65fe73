"""The demo agent's tools, run through the executor as the model would call them."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from copilotedge.auth import Principal
from copilotedge.models import Conversation, UsageRecord
from copilotedge.tools import ToolCallRequest, ToolContext, arun, get_tool

pytestmark = pytest.mark.django_db(transaction=True)


async def call(name, user, arguments="{}", approve=None):
    context = ToolContext(user=user, principal=Principal(user=user), tool_call_id="c1")
    request = ToolCallRequest("c1", name, arguments)
    return await arun(get_tool(f"project.tools.{name}"), request, context, approve)


def row(user, tokens, cost, when):
    return UsageRecord(
        user=user,
        protocol="openai",
        model_requested="m",
        total_tokens=tokens,
        cost=Decimal(cost),
        outcome="ok",
        created_at=when,
    )


async def test_whoami_is_the_callers_username(user, other_user):
    assert (await call("whoami", user)).content == "alice"
    assert (await call("whoami", other_user)).content == "bob"


async def test_my_usage_counts_this_months_rows_of_the_caller_only(user, other_user):
    now = timezone.now()
    last_month = now.replace(day=1) - timedelta(days=1)
    await UsageRecord.objects.abulk_create(
        [
            row(user, 100, "0.001", now),
            row(user, 50, "0.0005", now),
            row(user, 999, "1", last_month),
            row(other_user, 999, "1", now),
        ]
    )
    usage = json.loads((await call("my_usage", user)).content)
    assert usage == {
        "month": now.strftime("%Y-%m"),
        "requests": 2,
        "tokens": 150,
        "cost_usd": "0.00150000",
    }


async def test_forget_conversation_needs_approval_and_deletes_only_the_callers(user, other_user):
    mine = await Conversation.objects.acreate(user=user)
    theirs = await Conversation.objects.acreate(user=other_user)

    async def yes(request):
        return True

    async def no(request):
        return False

    assert get_tool("project.tools.forget_conversation").confirm is True
    denied = await call(
        "forget_conversation", user, json.dumps({"conversation_id": str(mine.pk)}), no
    )
    assert denied.outcome == "denied"
    assert await Conversation.objects.filter(pk=mine.pk).aexists()
    other = await call(
        "forget_conversation", user, json.dumps({"conversation_id": str(theirs.pk)}), yes
    )
    assert other.content == f"There is no conversation {theirs.pk} of yours."
    assert await Conversation.objects.filter(pk=theirs.pk).aexists()
    done = await call(
        "forget_conversation", user, json.dumps({"conversation_id": str(mine.pk)}), yes
    )
    assert done.content == f"Deleted the conversation {mine.pk}."
    assert not await Conversation.objects.filter(pk=mine.pk).aexists()
    bad = await call("forget_conversation", user, '{"conversation_id": "nope"}', yes)
    assert bad.outcome == "invalid"
