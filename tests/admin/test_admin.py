"""The admin pages for API keys, as a staff user sees them."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from copilotedge.models import ApiKey, UsageRecord, hash_key

pytestmark = pytest.mark.django_db

ADD = reverse("admin:copilotedge_apikey_add")
CHANGELIST = reverse("admin:copilotedge_apikey_changelist")


@pytest.fixture
def admin_client(db: None) -> Client:
    boss = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client = Client()
    client.force_login(boss)
    return client


def new_key_form(user: Any, **fields: Any) -> dict[str, Any]:
    return {
        "user": user.pk,
        "name": "ci",
        "expires_at_0": "",
        "expires_at_1": "",
        "requests_per_minute": "",
        "tokens_per_minute": "",
        "monthly_budget": "",
        "allowed_models": "[]",
        **fields,
    }


def test_creating_a_key_shows_the_secret_once(admin_client: Client, user: Any) -> None:
    form = admin_client.get(ADD)
    assert form.status_code == 200
    assert b"hashed_key" not in form.content
    saved = admin_client.post(
        ADD, new_key_form(user, requests_per_minute="30", allowed_models='["@cf/x/y"]')
    )
    # Shown on the response page itself: nothing to carry to the next one.
    assert saved.status_code == 200
    assert "no-store" in saved["Cache-Control"]
    key = ApiKey.objects.get()
    assert (key.requests_per_minute, key.allowed_models) == (30, ["@cf/x/y"])
    page = saved.content.decode()
    raw = secret_on(page)
    assert hash_key(raw) == key.hashed_key
    assert raw.startswith(key.prefix)
    # Not in messages (the demo keeps them in a signed, unencrypted cookie).
    assert "messages" not in saved.cookies or raw not in saved.cookies["messages"].value
    again = admin_client.get(CHANGELIST).content.decode()
    assert raw not in again  # once only
    change = admin_client.get(reverse("admin:copilotedge_apikey_change", args=[key.pk]))
    for content in (page, again, change.content.decode()):
        assert key.hashed_key not in content
    assert key.prefix in change.content.decode()
    assert raw not in change.content.decode()


def secret_on(page: str) -> str:
    (line,) = [line for line in page.splitlines() if 'id="new-api-key"' in line]
    return line.split('value="')[1].split('"')[0]


def test_save_and_continue_shows_the_secret_on_the_change_page(
    admin_client: Client, user: Any
) -> None:
    saved = admin_client.post(ADD, new_key_form(user, _continue="1"))
    key = ApiKey.objects.get()
    assert saved.status_code == 200
    assert hash_key(secret_on(saved.content.decode())) == key.hashed_key
    change = reverse("admin:copilotedge_apikey_change", args=[key.pk])
    assert f'href="{change}"' in saved.content.decode()


def test_a_budget_the_key_cannot_hold_is_refused(admin_client: Client, user: Any) -> None:
    response = admin_client.post(ADD, new_key_form(user, monthly_budget="0.0001"))
    assert response.status_code == 200
    assert "no more than 2 decimal places" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_keys_owner_cannot_be_changed(admin_client: Client, user: Any, other_user: Any) -> None:
    key, _ = ApiKey.create_key(user, name="mine")
    url = reverse("admin:copilotedge_apikey_change", args=[key.pk])
    assert 'name="user"' not in admin_client.get(url).content.decode()
    form = new_key_form(other_user, name="mine", revoked_at_0="", revoked_at_1="")
    assert admin_client.post(url, form).status_code == 302
    key.refresh_from_db()
    assert key.user_id == user.pk


def test_editing_a_key_keeps_its_secret(admin_client: Client, user: Any) -> None:
    key, raw = ApiKey.create_key(user, name="old")
    url = reverse("admin:copilotedge_apikey_change", args=[key.pk])
    form = new_key_form(user, name="renamed", revoked_at_0="", revoked_at_1="")
    response = admin_client.post(url, form, follow=True)
    assert response.status_code == 200
    assert 'id="new-api-key"' not in response.content.decode()
    key.refresh_from_db()
    assert key.name == "renamed"
    assert key.hashed_key == hash_key(raw)


def test_revoke_selected_keys(admin_client: Client, user: Any) -> None:
    keep, _ = ApiKey.create_key(user, name="keep")
    first, _ = ApiKey.create_key(user, name="first")
    second, _ = ApiKey.create_key(user, name="second")
    response = admin_client.post(
        CHANGELIST,
        {"action": "revoke_selected", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Revoked 2 keys." in response.content.decode()
    revoked = set(ApiKey.objects.filter(revoked_at__isnull=False).values_list("pk", flat=True))
    assert revoked == {first.pk, second.pk}
    assert not ApiKey.objects.get(pk=keep.pk).revoked_at


def test_the_list_shows_use_and_this_months_usage(admin_client: Client, user: Any) -> None:
    key, _ = ApiKey.create_key(user, name="busy")
    key.last_used_at = timezone.now()
    key.save()
    expired, _ = ApiKey.create_key(
        user, name="expired", expires_at=timezone.now() - timedelta(days=1)
    )
    for tokens, cost, days_ago in ((100, "0.0125", 0), (50, "0.0100", 0), (999, "9", 40)):
        UsageRecord.objects.create(
            api_key=key,
            user=user,
            protocol="openai",
            model_requested="m",
            outcome="ok",
            total_tokens=tokens,
            cost=Decimal(cost),
            created_at=timezone.now() - timedelta(days=days_ago),
        )
    page = admin_client.get(CHANGELIST).content.decode()
    assert key.prefix in page and expired.prefix in page
    assert '<td class="field-tokens_this_month">150</td>' in page
    assert '<td class="field-cost_this_month">0.0225</td>' in page
    assert "expired" in page and "active" in page
    for stored in ApiKey.objects.values_list("hashed_key", flat=True):
        assert stored not in page
    searched = admin_client.get(CHANGELIST, {"q": key.prefix}).content.decode()
    assert key.prefix in searched and expired.prefix not in searched


def test_a_key_revoked_in_the_admin_stops_working_at_once(
    admin_client: Client, api_key: tuple[ApiKey, str]
) -> None:
    key, raw = api_key
    bearer = {"Authorization": f"Bearer {raw}"}
    assert Client().get("/copilotedge/v1/models", headers=bearer).status_code == 200
    admin_client.post(CHANGELIST, {"action": "revoke_selected", "_selected_action": [key.pk]})
    assert Client().get("/copilotedge/v1/models", headers=bearer).status_code == 401
