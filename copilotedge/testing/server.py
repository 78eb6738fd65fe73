"""Run the emulator on a loopback port in a background thread, for tests.

uvicorn serves it here (a server that can start and stop in a thread, again and again,
in one process); it comes with the ``testing`` extra. ``manage.py copilotedge_emulator``
needs no extra: it serves the emulator with daphne, in the foreground.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from copilotedge.testing.emulator import EmulatorApp

if TYPE_CHECKING:
    import uvicorn

UVICORN_MISSING = (
    'EmulatorServer serves the emulator with uvicorn: pip install "copilotedge[testing]". '
    "(manage.py copilotedge_emulator serves it with daphne and needs no extra.)"
)

_START_TIMEOUT = 10.0
# How long stop() lets open responses finish before uvicorn cancels them.
_GRACE = 1


class EmulatorServer:
    """An :class:`EmulatorApp` served by uvicorn on ``host`` in a daemon thread.

    ``port=0`` picks a free port (read it back from ``port``). Use as a context manager,
    or call ``start()`` and ``stop()``. Point the app at it with
    ``COPILOTEDGE_API_BASE_URL = server.api_base_url`` and any account id.
    """

    def __init__(
        self, app: EmulatorApp | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = app if app is not None else EmulatorApp()
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        """The base in Cloudflare's own form, for ``COPILOTEDGE_API_BASE_URL``."""
        return f"{self.base_url}/client/v4"

    def start(self) -> EmulatorServer:
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        try:
            import uvicorn
        except ImportError as error:
            raise ImportError(UVICORN_MISSING, name="uvicorn") from error
        # Binding here, not in uvicorn, gives the real port before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.app.closing = False
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=_GRACE,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="copilotedge-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread = None
                sock.close()
                raise RuntimeError("the emulator server did not start")
            time.sleep(0.001)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        # Ending pending pauses first lets uvicorn stop at once rather than cancel them.
        self.app.close()
        self._server.should_exit = True
        self._thread.join(_GRACE + 1.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
