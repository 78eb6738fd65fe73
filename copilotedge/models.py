"""API keys, conversations, preferences and the token-usage ledger."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

KEY_PREFIX = "ce_"
_VISIBLE = 8  # characters after "ce_" kept in clear to find and show a key


def hash_key(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is safe (no dictionary to attack).
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A bearer key (``ce_…``); only its SHA-256 is stored, the secret is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="copilotedge_keys"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides COPILOTEDGE_RATE_LIMIT for this key."
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides COPILOTEDGE_TOKEN_RATE_LIMIT for this key."
    )
    monthly_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="USD per month."
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model ids this key may use; empty means any."
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or self.user})"

    @classmethod
    def generate(cls) -> tuple[str, str, str]:
        """A new raw key with its visible prefix and its hash."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        return raw, raw[: len(KEY_PREFIX) + _VISIBLE], hash_key(raw)

    @classmethod
    def create_key(cls, user: Any, **fields: Any) -> tuple[ApiKey, str]:
        """Create a key for ``user``; returns it with the raw secret (not stored)."""
        raw, prefix, hashed = cls.generate()
        key = cls.objects.create(user=user, prefix=prefix, hashed_key=hashed, **fields)
        return key, raw

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class Conversation(models.Model):
    """A stored chat: the history a later turn continues."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="copilotedge_conversations",
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["user", "-updated_at"], name="copilotedge_conv_user_recent"),
            models.Index(fields=["updated_at"], name="copilotedge_conv_updated"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        INCOMPLETE = "incomplete"
        ERROR = "error"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    sequence = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["conversation", "sequence"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "sequence"], name="copilotedge_message_sequence"
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    def as_openai(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class Preference(models.Model):
    """A user's defaults, applied when a request does not say otherwise."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="copilotedge_preference"
    )
    agent = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    store_conversations = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Preferences of {self.user}"


class UsageRecord(models.Model):
    """One upstream-facing request: who, what model, how many tokens, what it cost."""

    class Protocol(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        RUN = "run", "Workers AI /ai/run"
        AGUI = "agui", "AG-UI"
        GRAPHQL = "graphql", "GraphQL"
        WEBSOCKET = "websocket", "WebSocket"
        PYTHON = "python", "Python API"

    class Outcome(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        CANCELLED = "cancelled"
        INCOMPLETE = "incomplete"
        RATE_LIMITED = "rate_limited"

    class TokenSource(models.TextChoices):
        UPSTREAM = "upstream"
        ESTIMATED = "estimated"

    request_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    model_requested = models.CharField(max_length=200)
    model_served = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    token_source = models.CharField(
        max_length=16, choices=TokenSource.choices, default=TokenSource.UPSTREAM
    )
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    cache_hit = models.BooleanField(default=False)
    cost_saved = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(max_length=64, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    #: Upstream answers the turn asked for: one, plus one per server-tool step.
    steps = models.PositiveSmallIntegerField(default=1)
    #: Server-side tool calls the turn ran (refused and failed ones included).
    tool_calls = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Time first, for every period query; the latencies ride along so the usage
            # report's percentiles read only this index (an index-only scan), not the rows.
            models.Index(
                fields=["created_at", "latency_ms", "ttft_ms"], name="copilotedge_usage_time"
            ),
            models.Index(fields=["model_served", "created_at"], name="copilotedge_usage_model"),
            models.Index(fields=["user", "created_at"], name="copilotedge_usage_user"),
            models.Index(fields=["api_key", "created_at"], name="copilotedge_usage_key"),
        ]

    def __str__(self) -> str:
        return f"{self.protocol} {self.model_served or self.model_requested} {self.outcome}"


class UsageReport(UsageRecord):
    """The ledger seen as the admin's "Usage report" page (a proxy: no table of its own).

    It exists so the report is listed on the admin index next to the models.
    """

    class Meta:
        proxy = True
        verbose_name = "usage report"
        verbose_name_plural = "usage report"
