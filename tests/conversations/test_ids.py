"""Ids of new conversations and answers: version-7 UUIDs, so their age can be read."""

from __future__ import annotations

import time
import uuid

from copilotedge.conversations.ids import issued_at, issued_within, new_id


def test_new_ids_are_version_7_rfc_variant_and_unique():
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)


def test_an_id_tells_when_it_was_issued():
    before = time.time()
    value = new_id()
    issued = issued_at(value)
    assert issued is not None and before - 0.002 <= issued <= time.time()
    assert issued_within(value, 1.0)
    assert issued_at(uuid.uuid4()) is None and not issued_within(uuid.uuid4(), 1e9)


def test_old_ids_are_not_young():
    old = uuid.UUID(int=(new_id().int & ((1 << 80) - 1)) | (int((time.time() - 60) * 1000) << 80))
    assert old.version == 7
    assert issued_within(old, 120) and not issued_within(old, 5)


def test_ids_sort_by_issue_time():
    first = new_id()
    time.sleep(0.002)
    assert new_id() > first
