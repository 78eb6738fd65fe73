"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from copilotedge.admission import AdmissionLimit  # noqa: E402
from copilotedge.routing import Lifespan, websocket_urlpatterns  # noqa: E402
from copilotedge.threads import RequestThreads  # noqa: E402

# Lifespan: a stop (SIGTERM, or the ASGI lifespan's shutdown) finishes and records
# the answers in flight before the process exits.
application = Lifespan(
    ProtocolTypeRouter(
        {
            # A burst of requests is set up a few at a time (COPILOTEDGE_ADMISSION_LIMIT), and
            # each request's sync code runs in a pooled thread, not one started for it.
            "http": AdmissionLimit(RequestThreads(django_asgi_app)),
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)

# What is loaded by now lives as long as the process: keep it out of the collector's
# full passes (each took about 50 ms of the event loop before), and collect the young
# generation less often: a streamed answer allocates thousands of objects, nearly all
# freed by reference counting, and a pass every 700 of them cost more than it found.
gc.freeze()
gc.set_threshold(7_000, 10, 10)
