"""``manage.py copilotedge_emulator``: the Workers AI emulator as a foreground server."""

from __future__ import annotations

from argparse import ArgumentParser
from collections.abc import Callable
from io import TextIOBase
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from copilotedge.testing import EmulatorApp

Address = tuple[str, int]


def serve(
    app: EmulatorApp,
    host: str,
    port: int,
    on_ready: Callable[[Address], None],
    access_log: TextIOBase | None,
) -> bool:
    """Serve ``app`` with daphne until SIGINT or SIGTERM; ``False`` if it could not listen.

    daphne is a dependency of the app (``runserver`` serves ASGI through it), so the
    emulator runs wherever the app is installed. ``on_ready`` gets the address daphne
    listens on (the real port, also for ``port=0``) before the first request is served.
    """
    # Imported here: daphne installs Twisted's asyncio reactor when imported.
    from daphne.access import AccessLogGenerator
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server

    def ready() -> None:
        # daphne has bound every endpoint by now (an endpoint it cannot bind stops it).
        on_ready(server.listening_addresses[0])

    server: Any = Server(
        app,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        action_logger=AccessLogGenerator(access_log) if access_log is not None else None,
        verbosity=0,
        ready_callable=ready,
    )
    server.run()
    return bool(server.listening_addresses)


class Command(BaseCommand):
    """Serve the emulator with daphne until interrupted."""

    help = "Run the Cloudflare Workers AI emulator (a development tool) in the foreground."
    # The emulator uses nothing from the project, so a half-configured site can still run it.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
        parser.add_argument("--port", type=int, default=8788, help="Port (0 picks a free one).")
        parser.add_argument(
            "--token-delay",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="Pause before each streamed token.",
        )
        parser.add_argument("--tokens", type=int, default=20, help="Tokens in each answer.")
        parser.add_argument(
            "--api-token", default=None, help="Accept only this bearer token (default: any)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["tokens"] < 0 or options["token_delay"] < 0:
            raise CommandError("--tokens and --token-delay must not be negative.")
        app = EmulatorApp(
            tokens=options["tokens"],
            token_delay=options["token_delay"],
            api_token=options["api_token"],
        )
        host: str = options["host"]
        port: int = options["port"]

        def ready(address: Address) -> None:
            bound, real_port = address
            url = f"http://[{bound}]:{real_port}" if ":" in bound else f"http://{bound}:{real_port}"
            self.stdout.write(
                f"Workers AI emulator (a development tool, not for production) listening on "
                f"{url}; use COPILOTEDGE_API_BASE_URL={url}/client/v4"
            )
            self.stdout.flush()

        access_log = self.stdout if options["verbosity"] > 1 else None
        if not serve(app, host, port, ready, access_log):
            raise CommandError(f"Cannot listen on {host}:{port}.")
