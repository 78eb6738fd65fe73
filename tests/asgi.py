"""The ASGI application the suite drives (HTTP and WebSocket), as a site would wire it."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from copilotedge.routing import lifespan  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "lifespan": lifespan})
