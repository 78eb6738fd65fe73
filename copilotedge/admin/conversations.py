"""The admin for stored conversations (read-mostly) and the users' preferences."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from copilotedge.models import Conversation, Message, Preference


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
