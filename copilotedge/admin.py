"""The admin: one ``ModelAdmin`` per model, each self-contained."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone

from .models import ApiKey, Conversation, Message, Preference
from .ratelimit import month_start

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
        # The only time the secret exists outside the client: shown once, never stored.
        messages.warning(
            request,
            f"The new API key is {raw} — copy it now, it will not be shown again.",
        )

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        now, count = timezone.now(), 0
        # Saved one by one, not update(): saving tells the key cache to forget the key.
        for key in queryset.filter(revoked_at__isnull=True):
            key.revoked_at = now
            key.save(update_fields=["revoked_at"])
            count += 1
        self.message_user(request, f"Revoked {count} key{'s' * (count != 1)}.", messages.SUCCESS)


# --- Conversations and preferences (issue 5) ----------------------------------------------


class MessageInline(admin.TabularInline):  # type: ignore[type-arg]
    """A conversation's messages, read-only: they are a record of what was said."""

    model = Message
    extra = 0
    can_delete = False
    ordering = ["sequence"]
    fields = readonly_fields = (
        "sequence",
        "role",
        "content",
        "status",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "created_at",
    )
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-mostly: only the title and metadata may be edited."""

    list_display = ["__str__", "user", "api_key", "model", "message_count", "updated_at"]
    list_filter = ["model", "updated_at"]
    search_fields = ["id", "title", "user__username", "user__email", "messages__content"]
    date_hierarchy = "updated_at"
    ordering = ["-updated_at"]
    readonly_fields = ["id", "user", "api_key", "model", "created_at", "updated_at"]
    fields = ["id", "title", "user", "api_key", "model", "metadata", "created_at", "updated_at"]
    inlines = [MessageInline]
    list_select_related = ["user", "api_key"]
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        rows: QuerySet[Conversation] = super().get_queryset(request)
        return rows.annotate(message_total=Count("messages"))

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, obj: Conversation) -> int:
        return int(getattr(obj, "message_total", 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Preference)
class PreferenceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["user", "agent", "model", "temperature", "max_tokens", "store_conversations"]
    list_filter = ["store_conversations", "model"]
    search_fields = ["user__username", "user__email"]
    raw_id_fields = ["user"]
    readonly_fields = ["updated_at"]


# --- end of conversations and preferences --------------------------------------------------
