"""The demo agent's server-side tools: they read and change the site's own data as the
person chatting."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from django.db.models import Count, Sum
from django.utils import timezone
from pydantic import Field

import copilotedge
from copilotedge.models import Conversation, UsageRecord
from copilotedge.tools import ToolContext

# The ledger's precision (UsageRecord.cost has eight decimal places).
_LEDGER_PRECISION = Decimal("0.00000001")


def _month_start() -> datetime:
    return timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@copilotedge.tool
def whoami(context: ToolContext) -> str:
    """The username of the person you are talking to."""
    user = context.user
    return str(user.get_username()) if user is not None else "anonymous"


@copilotedge.tool
def my_usage(context: ToolContext) -> dict[str, Any]:
    """This calendar month's requests, tokens and cost (USD) for the person you are
    talking to, from the usage ledger."""
    start = _month_start()
    totals = UsageRecord.objects.filter(user=context.user, created_at__gte=start).aggregate(
        requests=Count("id"), tokens=Sum("total_tokens"), cost=Sum("cost")
    )
    return {
        "month": start.strftime("%Y-%m"),
        "requests": totals["requests"],
        "tokens": totals["tokens"] or 0,
        "cost_usd": str((totals["cost"] or Decimal(0)).quantize(_LEDGER_PRECISION)),
    }


@copilotedge.tool(confirm=True)
def forget_conversation(
    context: ToolContext,
    conversation_id: Annotated[uuid.UUID, Field(description="The conversation's id")],
) -> str:
    """Delete one of the stored conversations of the person you are talking to."""
    deleted, _ = Conversation.objects.filter(pk=conversation_id, user=context.user).delete()
    if not deleted:
        return f"There is no conversation {conversation_id} of yours."
    return f"Deleted the conversation {conversation_id}."
