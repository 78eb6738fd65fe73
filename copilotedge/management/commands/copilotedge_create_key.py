"""``manage.py copilotedge_create_key --user NAME``: a new API key, printed once on stdout."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from copilotedge.models import ApiKey


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CommandError(f"{value!r} is not a positive whole number.")
    return number


def usd(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0:
        raise CommandError(f"{value!r} is not an amount of USD.")
    # The key's own field decides what it can hold (as the admin's form does), so a value
    # it would round to something else (0.0001 to 0.00) is refused, not stored.
    try:
        ApiKey._meta.get_field("monthly_budget").run_validators(amount)
    except ValidationError as error:
        raise CommandError(f"--budget {value}: {' '.join(error.messages)}") from None
    return amount


class Command(BaseCommand):
    help = (
        "Create an API key for a user (created if missing) and print it: the key is the "
        "only line on stdout, and it is never shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username; created if missing")
        parser.add_argument("--rpm", type=positive_int, help="requests per minute for this key")
        parser.add_argument("--tpm", type=positive_int, help="tokens per minute for this key")
        parser.add_argument("--budget", type=usd, help="USD this key may spend a month")
        parser.add_argument("--staff", action="store_true", help="make the user staff")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: options["user"]}).first()
        if user is None:
            user = User.objects.create_user(**{User.USERNAME_FIELD: options["user"]})
            self.stderr.write(f"Created user {options['user']!r} (no password).")
        if options["staff"] and not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        _, raw = ApiKey.create_key(
            user,
            name="copilotedge_create_key",
            requests_per_minute=options["rpm"],
            tokens_per_minute=options["tpm"],
            monthly_budget=options["budget"],
        )
        self.stdout.write(raw)
