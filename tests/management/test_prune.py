"""copilotedge_prune: old conversations go in batches, with progress; --dry-run deletes nothing."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from copilotedge.models import Conversation, Message, UsageRecord


def make(user: Any, days_ago: float, messages: int = 2) -> Conversation:
    when = timezone.now() - timedelta(days=days_ago)
    conversation = Conversation.objects.create(user=user, updated_at=when, created_at=when)
    for i in range(messages):
        Message.objects.create(conversation=conversation, sequence=i, role="user", content="x")
    return conversation


def prune(*args: str) -> str:
    out = StringIO()
    call_command("copilotedge_prune", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def conversations(user: Any) -> dict[str, list[Conversation]]:
    return {
        "old": [make(user, 40 + i) for i in range(5)],
        "recent": [make(user, 3), make(user, 29)],
    }


def test_prunes_in_batches_with_progress_and_keeps_recent_ones(conversations, user):
    record = UsageRecord.objects.create(
        user=user, conversation=conversations["old"][0], protocol="openai",
        model_requested="m", outcome="ok",
    )  # fmt: skip
    output = prune("--older-than", "30d", "--batch-size", "2")
    assert output.splitlines()[:3] == [
        "Deleted 2/5 conversations (4 messages)",
        "Deleted 4/5 conversations (8 messages)",
        "Deleted 5/5 conversations (10 messages)",
    ]
    assert "deleted 5 conversations and 10 messages" in output
    remaining = set(Conversation.objects.values_list("pk", flat=True))
    assert remaining == {c.pk for c in conversations["recent"]}
    assert Message.objects.count() == 4
    record.refresh_from_db()
    assert record.conversation_id is None  # the ledger stays


def test_dry_run_counts_and_deletes_nothing(conversations):
    output = prune("--older-than", "30d", "--dry-run")
    assert output.startswith("Would delete 5 conversations (10 messages)")
    assert Conversation.objects.count() == 7


@override_settings(COPILOTEDGE_RETENTION_DAYS=10)
def test_default_age_is_the_retention_setting(conversations):
    prune()
    assert Conversation.objects.count() == 1  # only the 3-day-old one is younger than 10 d


def test_hours_and_weeks(user):
    make(user, 0.5)
    make(user, 0.01)
    prune("--older-than", "6h")
    assert Conversation.objects.count() == 1
    make(user, 20)
    prune("--older-than", "2w")
    assert Conversation.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("age", ["soon", "0d", "-3d", "3y"])
def test_a_bad_age_is_refused(age):
    with pytest.raises(CommandError, match="--older-than"):
        prune("--older-than", age)


def answer(user: Any, status: str, minutes_ago: float) -> Message:
    conversation = Conversation.objects.create(user=user)
    when = timezone.now() - timedelta(minutes=minutes_ago)
    return Message.objects.create(
        conversation=conversation, sequence=0, role="assistant", content="half an ans",
        status=status, created_at=when, updated_at=when,
    )  # fmt: skip


def test_answers_a_stopped_process_left_streaming_are_marked_incomplete(user):
    # Longer ago than RETRY_DEADLINE + TOTAL_TIMEOUT + READ_TIMEOUT (8 minutes by default): no
    # server can still be generating it.
    left = answer(user, "streaming", minutes_ago=60)
    live = answer(user, "streaming", minutes_ago=2)
    done = answer(user, "complete", minutes_ago=60)
    assert "Would mark 1 abandoned answers incomplete." in prune("--dry-run")
    assert Message.objects.get(pk=left.pk).status == "streaming"
    assert "Marked 1 abandoned answers incomplete." in prune()
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {left.pk: "incomplete", live.pk: "streaming", done.pk: "complete"}


@override_settings(COPILOTEDGE_TOTAL_TIMEOUT=7200)
def test_an_answer_within_the_longest_it_can_run_stays_streaming(user):
    live = answer(user, "streaming", minutes_ago=60)
    prune()
    assert Message.objects.get(pk=live.pk).status == "streaming"
