"""The admin for the usage ledger (read-only, with totals and CSV export) and the usage report.

The report page and the exports are rendered by :mod:`copilotedge.admin.dashboard`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from copilotedge.admin import dashboard
from copilotedge.models import UsageRecord, UsageReport
from copilotedge.usage import report

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
