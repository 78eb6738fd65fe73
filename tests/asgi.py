"""The ASGI application the suite drives (HTTP and WebSocket), as a site would wire it."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
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
            "http": AdmissionLimit(RequestThreads(django_asgi_app)),
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
