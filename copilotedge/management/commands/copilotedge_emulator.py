"""``manage.py copilotedge_emulator``: the Workers AI emulator as a foreground server."""

from __future__ import annotations

import contextlib
import socket
from argparse import ArgumentParser
from typing import Any

import uvicorn
from django.core.management.base import BaseCommand, CommandError

from copilotedge.testing import EmulatorApp


class Command(BaseCommand):
    """Serve the emulator with uvicorn until interrupted."""

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
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound and listening here, so the line below names the real port (even for
        # --port 0) and a client that reads it can connect before uvicorn is up.
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, options["port"]))
            sock.listen(2048)
        except OSError as error:
            sock.close()
            raise CommandError(f"Cannot listen on {host}:{options['port']}: {error}") from None
        port = sock.getsockname()[1]
        url = f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
        self.stdout.write(
            f"Workers AI emulator (a development tool, not for production) listening on {url}; "
            f"use COPILOTEDGE_API_BASE_URL={url}/client/v4"
        )
        self.stdout.flush()
        verbose = options["verbosity"] > 1
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="info" if verbose else "warning",
            access_log=verbose,
        )
        # uvicorn re-raises Ctrl+C after its graceful shutdown; here that is a normal exit.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])
