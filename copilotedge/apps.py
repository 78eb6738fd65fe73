from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class CopilotEdgeConfig(AppConfig):
    name = "copilotedge"
    verbose_name = "CopilotEdge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings)
