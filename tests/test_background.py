"""The group-commit writer: batches, and a failing job that fails alone."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError

from copilotedge import background as db
from copilotedge.models import Conversation

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
