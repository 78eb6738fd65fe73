"""The demo's settings, routed to the bare pass-through view (see passthrough_urls)."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.passthrough_urls"
