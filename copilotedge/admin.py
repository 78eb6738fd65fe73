"""The admin: one ``ModelAdmin`` per model, each self-contained."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from . import dashboard, report
from .models import ApiKey, UsageRecord, UsageReport
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


# --- Usage ledger and usage report (issue 4) ---------------------------------------------

if TYPE_CHECKING:
    UsageRecordAdminBase = admin.ModelAdmin[UsageRecord]
    UsageReportAdminBase = admin.ModelAdmin[UsageReport]
else:
    UsageRecordAdminBase = UsageReportAdminBase = admin.ModelAdmin


@admin.register(UsageRecord)
class UsageRecordAdmin(UsageRecordAdminBase):
    """The ledger, read-only, with totals for whatever the filters select."""

    list_display = (
        "created_at",
        "protocol",
        "model_served",
        "user",
        "api_key",
        "outcome",
        "total_tokens",
        "token_source",
        "cost",
        "cache_hit",
        "latency_ms",
        "ttft_ms",
    )
    list_filter = (
        "model_served",
        "outcome",
        "protocol",
        "cache_hit",
        "token_source",
        "user",
        "api_key",
    )
    search_fields = (
        "request_id",
        "user__username",
        "api_key__prefix",
        "api_key__name",
        "model_served",
        "error_code",
    )
    date_hierarchy = "created_at"
    list_select_related = ("user", "api_key")
    list_per_page = 100
    # The exact count of a large filtered ledger is a second full scan; the totals show it.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        export = path(
            "export.csv",
            self.admin_site.admin_view(self.export_view),
            name="copilotedge_usagerecord_export",
        )
        return [export, *super().get_urls()]

    def filtered_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        """The rows the changelist shows for this request's filters, search and dates."""
        return self.get_changelist_instance(request).get_queryset(request)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        cl = getattr(response, "context_data", None) and response.context_data.get("cl")  # type: ignore[attr-defined]
        if isinstance(response, TemplateResponse) and cl is not None:
            totals = report.totals(cl.queryset, with_percentiles=False)
            response.context_data["usage_totals"] = [  # type: ignore[index]
                ("Requests", f"{totals.requests:,}"),
                ("Prompt tokens", f"{totals.prompt_tokens:,}"),
                ("Completion tokens", f"{totals.completion_tokens:,}"),
                ("Cost", dashboard.usd(totals.cost)),
                ("Saved by cache", dashboard.usd(totals.cost_saved)),
                ("Error rate", dashboard.percent(totals.error_rate)),
            ]
            response.context_data["export_query"] = request.GET.urlencode()  # type: ignore[index]
        return response

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return dashboard.export_rows_response(self.filtered_queryset(request))


@admin.register(UsageReport)
class UsageReportAdmin(UsageReportAdminBase):
    """The "Usage report" page, listed on the admin index; needs ``view_usagerecord``."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(dashboard.VIEW_PERMISSION)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(dashboard.VIEW_PERMISSION)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("", view(self.changelist_view), name="copilotedge_usagereport_changelist"),
            path(
                "export/<str:table>.csv",
                view(self.export_view),
                name="copilotedge_usagereport_export",
            ),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        self._require_view(request)
        return dashboard.report_view(self, request)

    def export_view(self, request: HttpRequest, table: str) -> HttpResponse:
        self._require_view(request)
        return dashboard.export_table_view(self, request, table)

    def _require_view(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied


# --- end of usage ledger and usage report -------------------------------------------------
