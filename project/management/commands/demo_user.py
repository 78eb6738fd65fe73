"""Create the demo site's user (``demo``/``demo``, staff and superuser) if it is missing.

Only with ``DEBUG`` on: a superuser whose password is its name must never reach a site
that is served for real.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo user demo/demo (staff, superuser) unless it exists; DEBUG only."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            self.stderr.write(
                "DEBUG is off: not creating the demo user demo/demo. "
                "Create an account with `manage.py createsuperuser`."
            )
            return
        User = get_user_model()
        if User.objects.filter(username="demo").exists():
            return
        User.objects.create_superuser("demo", "demo@example.com", "demo")
        self.stdout.write("Created the demo user: username demo, password demo.")
