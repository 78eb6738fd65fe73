"""Create the demo site's user (``demo``/``demo``, staff and superuser) if it is missing."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo user demo/demo (staff, superuser) unless it exists."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        if User.objects.filter(username="demo").exists():
            return
        User.objects.create_superuser("demo", "demo@example.com", "demo")
        self.stdout.write("Created the demo user: username demo, password demo.")
