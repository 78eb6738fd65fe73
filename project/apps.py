from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class DemoConfig(AppConfig):
    name = "project"
    verbose_name = "CopilotEdge demo"

    def ready(self) -> None:
        from .checks import check_production_settings

        checks.register(check_production_settings, checks.Tags.security, deploy=False)
