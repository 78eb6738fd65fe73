"""Delete conversations (and their messages) not active for a while, in batches; close
answers a stopped process left ``streaming``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from copilotedge.conf import settings
from copilotedge.models import Conversation, Message

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: Slack past the longest an answer can be generated, for clocks and slow saves.
_ABANDON_MARGIN = timedelta(minutes=1)


def parse_age(value: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``; a bare number is days."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", value)
    if match is None or int(match[1]) <= 0:
        raise CommandError(f"--older-than: {value!r} is not an age like 30d, 12h or 2w.")
    return timedelta(**{_UNITS[match[2] or "d"]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Delete conversations (with their messages) last active longer ago than "
        "--older-than (default COPILOTEDGE_RETENTION_DAYS days). Usage records are kept. "
        "Answers a stopped server process left 'streaming' are marked incomplete."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", help="an age: 30d, 12h, 2w (default: the setting)")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would go, delete nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = (
            parse_age(options["older_than"])
            if options["older_than"]
            else timedelta(days=settings.RETENTION_DAYS)
        )
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = timezone.now() - age
        old = Conversation.objects.filter(updated_at__lt=cutoff)
        total = old.count()
        if options["dry_run"]:
            messages = Message.objects.filter(conversation__in=old).count()
            self.stdout.write(
                f"Would delete {total} conversations ({messages} messages) "
                f"last active before {cutoff:%Y-%m-%d %H:%M} UTC."
            )
            left = abandoned_answers().count()
            self.stdout.write(f"Would mark {left} abandoned answers incomplete.")
            return
        deleted = deleted_messages = 0
        while True:
            with transaction.atomic():
                ids = list(old.order_by("updated_at").values_list("pk", flat=True)[:batch_size])
                if not ids:
                    break
                _, per_model = Conversation.objects.filter(pk__in=ids).delete()
            deleted += per_model.get(Conversation._meta.label, 0)
            deleted_messages += per_model.get(Message._meta.label, 0)
            self.stdout.write(
                f"Deleted {deleted}/{total} conversations ({deleted_messages} messages)"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: deleted {deleted} conversations and {deleted_messages} messages "
                f"last active before {cutoff:%Y-%m-%d %H:%M} UTC."
            )
        )
        closed = abandoned_answers().update(
            status=Message.Status.INCOMPLETE, updated_at=timezone.now()
        )
        if closed:
            self.stdout.write(f"Marked {closed} abandoned answers incomplete.")


def abandoned_answers() -> QuerySet[Message]:
    """Answers still ``streaming`` though begun longer ago than any answer can run.

    A turn gets its first delta within RETRY_DEADLINE (or waits as long for an identical
    request's) and ends TOTAL_TIMEOUT after that, checked between reads, so at most a
    READ_TIMEOUT later; such a row was left by a server process that stopped mid-answer.
    A resume closes one it finds; this closes the ones nobody resumes, which would
    otherwise say "streaming" for ever.
    """
    longest = timedelta(
        seconds=settings.RETRY_DEADLINE + settings.TOTAL_TIMEOUT + settings.READ_TIMEOUT
    )
    started_before = timezone.now() - longest - _ABANDON_MARGIN
    return Message.objects.filter(status=Message.Status.STREAMING, created_at__lt=started_before)
