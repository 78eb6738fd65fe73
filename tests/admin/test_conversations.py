"""The admin of conversations (read-mostly, searchable, inline messages) and preferences."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from copilotedge.models import Conversation, Message, Preference


@pytest.fixture
def admin_client(db: None) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    return client


@pytest.fixture
def conversation(user: Any) -> Conversation:
    conversation = Conversation.objects.create(user=user, title="Trip to Lyon", model="m")
    Message.objects.create(conversation=conversation, sequence=0, role="user", content="Trains?")
    Message.objects.create(
        conversation=conversation, sequence=1, role="assistant", content="Every hour from Paris."
    )
    return conversation


def test_changelist_lists_and_searches_message_text(admin_client, conversation):
    Conversation.objects.create(title="Other chat")
    page = admin_client.get("/admin/copilotedge/conversation/")
    assert page.status_code == 200
    assert "Trip to Lyon" in page.text and "Other chat" in page.text
    found = admin_client.get("/admin/copilotedge/conversation/", {"q": "every hour"})
    assert "Trip to Lyon" in found.text and "Other chat" not in found.text


def test_change_page_shows_messages_read_only_and_allows_no_adding(admin_client, conversation):
    page = admin_client.get(f"/admin/copilotedge/conversation/{conversation.pk}/change/")
    assert page.status_code == 200
    assert "Every hour from Paris." in page.text
    assert 'name="messages-0-content"' not in page.text  # not an editable field
    assert admin_client.get("/admin/copilotedge/conversation/add/").status_code == 403


def test_title_is_editable_and_messages_stay(admin_client, conversation):
    response = admin_client.post(
        f"/admin/copilotedge/conversation/{conversation.pk}/change/",
        {
            "title": "Lyon by train",
            "metadata": "{}",
            "messages-TOTAL_FORMS": "2",
            "messages-INITIAL_FORMS": "2",
            "messages-MIN_NUM_FORMS": "0",
            "messages-MAX_NUM_FORMS": "1000",
            "messages-0-id": str(conversation.messages.get(sequence=0).pk),
            "messages-0-conversation": str(conversation.pk),
            "messages-1-id": str(conversation.messages.get(sequence=1).pk),
            "messages-1-conversation": str(conversation.pk),
        },
    )
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "Lyon by train"
    assert conversation.messages.count() == 2


def test_preferences_are_editable(admin_client, user):
    preference = Preference.objects.create(user=user)
    response = admin_client.post(
        f"/admin/copilotedge/preference/{preference.pk}/change/",
        {
            "user": str(user.pk),
            "agent": "",
            "model": "@cf/meta/llama-3.2-3b-instruct",
            "system_prompt": "Be brief.",
            "temperature": "0.4",
            "max_tokens": "",
        },
    )
    assert response.status_code == 302
    preference.refresh_from_db()
    assert preference.model == "@cf/meta/llama-3.2-3b-instruct"
    assert preference.system_prompt == "Be brief." and preference.temperature == 0.4
    assert preference.store_conversations is False  # an unticked box in the form
    listing = admin_client.get("/admin/copilotedge/preference/", {"q": user.username})
    assert user.username in listing.text
