"""The admin for API keys: created with the secret shown once, revoked in bulk.

The changelist shows each key's tokens and cost this month from the usage ledger.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from copilotedge.models import ApiKey
from copilotedge.ratelimit.budget import month_start

if TYPE_CHECKING:
    ApiKeyAdminBase = admin.ModelAdmin[ApiKey]
else:  # ModelAdmin is generic only to type checkers
    ApiKeyAdminBase = admin.ModelAdmin


@admin.register(ApiKey)
class ApiKeyAdmin(ApiKeyAdminBase):
    """API keys: created here with the secret shown once, revoked in bulk, never the hash."""

    list_display = (
        "prefix",
        "name",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "status",
        "tokens_this_month",
        "cost_this_month",
    )
    list_filter = ("created_at", "last_used_at", "revoked_at")
    search_fields = ("prefix", "name", "user__username", "user__email")
    date_hierarchy = "created_at"
    raw_id_fields = ("user",)
    readonly_fields = ("prefix", "created_at", "last_used_at")
    actions = ("revoke_selected",)
    fieldsets = (
        (None, {"fields": ("user", "name", "prefix", "created_at", "last_used_at")}),
        ("Validity", {"fields": ("expires_at", "revoked_at")}),
        (
            "Limits",
            {
                "fields": (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "monthly_budget",
                    "allowed_models",
                )
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        this_month = Q(usage__created_at__gte=month_start(time.time()))
        return (
            super()
            .get_queryset(request)
            .select_related("user")
            .annotate(
                month_tokens=Sum("usage__total_tokens", filter=this_month),
                month_cost=Sum("usage__cost", filter=this_month),
            )
        )

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:  # a new key has no prefix, history or revocation yet
            return (
                (None, {"fields": ("user", "name")}),
                ("Validity", {"fields": ("expires_at",)}),
                self.fieldsets[2],
            )
        return self.fieldsets

    @admin.display(description="status")
    def status(self, key: ApiKey) -> str:
        if key.revoked_at is not None:
            return "revoked"
        return "active" if key.is_active else "expired"

    @admin.display(description="tokens this month", ordering="month_tokens")
    def tokens_this_month(self, key: ApiKey) -> int:
        return getattr(key, "month_tokens", None) or 0

    @admin.display(description="cost this month (USD)", ordering="month_cost")
    def cost_this_month(self, key: ApiKey) -> str:
        cost = getattr(key, "month_cost", None) or 0
        return f"{cost:.4f}"

    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: ModelForm[ApiKey], change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        raw, obj.prefix, obj.hashed_key = ApiKey.generate()
        super().save_model(request, obj, form, change)
        request.copilotedge_new_key = raw  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The new key's secret, shown once on this page (never in ``messages``, which a
        site may keep in a cookie), not stored anywhere."""
        secret = getattr(request, "copilotedge_new_key", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "opts": opts,
            "title": "New API key",
            "key": obj,
            "secret": secret,
            "change_url": reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]
            ),
            "add_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        }
        response = TemplateResponse(request, "admin/copilotedge/apikey/created.html", context)
        add_never_cache_headers(response)
        return response

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        """A key's owner is set when it is created; moving it would hand its secret over."""
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if obj is None else (*fields, "user")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        now, count = timezone.now(), 0
        # Saved one by one, not update(): saving tells the key cache to forget the key.
        for key in queryset.filter(revoked_at__isnull=True):
            key.revoked_at = now
            key.save(update_fields=["revoked_at"])
            count += 1
        self.message_user(request, f"Revoked {count} key{'s' * (count != 1)}.", messages.SUCCESS)
