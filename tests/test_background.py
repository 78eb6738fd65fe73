"""The group-commit writer: batches, and a failing job that fails alone."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError

from copilotedge import background as db
from copilotedge.models import Conversation, Message, UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_job_whose_commit_fails_fails_alone() -> None:
    user = await get_user_model().objects.acreate(username="owner")
    writer = db.GroupCommit()
    good_id, bad_id = uuid.uuid4(), uuid.uuid4()
    # Foreign keys are checked at COMMIT, after the job itself has returned.
    dangling = writer.submit(lambda: Conversation.objects.create(id=bad_id, user_id=10**9).pk)
    good = writer.submit(lambda: Conversation.objects.create(id=good_id, user=user).pk)
    after = writer.submit(lambda: Conversation.objects.filter(id=good_id).count())
    results = await asyncio.gather(dangling, good, after, return_exceptions=True)
    assert isinstance(results[0], IntegrityError)
    assert results[1:] == [good_id, 1]
    assert [c.pk async for c in Conversation.objects.all()] == [good_id]


async def test_inserts_of_a_batch_go_together_parents_first(monkeypatch) -> None:
    user = await get_user_model().objects.acreate(username="owner")
    writer = db.GroupCommit()
    statements: list[tuple[str, int]] = []
    for model in (Conversation, Message, UsageRecord):
        real = model.objects.bulk_create

        def counted(rows: list[Any], *args: Any, real: Any = real, **kwargs: Any) -> Any:
            statements.append((type(rows[0]).__name__, len(rows)))
            return real(rows, *args, **kwargs)

        monkeypatch.setattr(model.objects, "bulk_create", counted)
    conversations = [Conversation(id=uuid.uuid4(), user=user) for _ in range(3)]
    ledger = writer.insert([ledger_row(user, conversation=conversations[0])])
    # Queued children first: each still goes after the conversation it points to.
    pending = [
        writer.insert([Message(conversation=c, sequence=0, role="user"), c]) for c in conversations
    ]
    await asyncio.gather(ledger, *pending)
    # One statement a model, the conversations before the rows that point to them.
    assert statements[0] == ("Conversation", 3)
    assert sorted(statements[1:]) == [("Message", 3), ("UsageRecord", 1)]
    assert await Message.objects.acount() == 3
    record = await UsageRecord.objects.aget()
    assert record.pk is not None and record.conversation_id == conversations[0].id


def ledger_row(user: Any, **fields: Any) -> UsageRecord:
    return UsageRecord(user=user, model_requested="m", protocol="openai", outcome="ok", **fields)


async def test_an_insert_whose_commit_fails_fails_alone() -> None:
    user = await get_user_model().objects.acreate(username="owner")
    writer = db.GroupCommit()
    good, bad = ledger_row(user), ledger_row(None, user_id=10**9)  # caught at COMMIT
    results = await asyncio.gather(
        writer.insert([good]), writer.insert([bad]), return_exceptions=True
    )
    assert results[0] is None and isinstance(results[1], IntegrityError)
    assert [r.pk async for r in UsageRecord.objects.all()] == [good.pk]


class Together:
    """A combinable job that records how it ran."""

    combinable = True
    log: list[Any] = []

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> str:
        self.log.append(self.name)
        return self.name

    @classmethod
    def run_together(cls, jobs: list[Together]) -> list[str]:
        cls.log.append(tuple(job.name for job in jobs))
        return [job.name.upper() for job in jobs]


async def test_combinable_jobs_of_a_batch_run_together_at_the_first_ones_place() -> None:
    writer = db.GroupCommit()
    Together.log = []
    first = [writer.submit(lambda: Together.log.append("plain") or "p")]
    first += [writer.submit(Together(name)) for name in ("a", "b")]
    first += [writer.submit(lambda: Together.log.append("last") or "l")]
    first += [writer.submit(Together("c"))]
    assert await asyncio.gather(*first) == ["p", "A", "B", "l", "C"]
    assert Together.log == ["plain", ("a", "b", "c"), "last"]
    alone = await writer.submit(Together("d"))  # one of its kind runs as itself
    assert (alone, Together.log[-1]) == ("d", "d")
