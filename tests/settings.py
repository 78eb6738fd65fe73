"""Settings for the test suite: independent of the demo project.

The suite runs on a file-based SQLite database (async tests cross threads, which an
in-memory one cannot) unless ``DATABASE_URL`` names PostgreSQL, and on local-memory
cache and channel layer unless ``REDIS_URL`` is set; CI runs it both ways.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

_PID = os.getpid()
_DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "copilotedge",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "copilotedge.middleware.RateLimitMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if _DATABASE_URL.startswith(("postgres://", "postgresql://")):
    _url = urlparse(_DATABASE_URL)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _url.path.lstrip("/") or "test",
            "USER": _url.username or "postgres",
            "PASSWORD": _url.password or "",
            "HOST": _url.hostname or "127.0.0.1",
            "PORT": str(_url.port or 5432),
            # One test database per run, so parallel runs on one server do not collide.
            "TEST": {"NAME": f"test_copilotedge_{_PID}"},
        }
    }
else:
    _db = Path(tempfile.gettempdir()) / f"copilotedge-tests-{_PID}.sqlite3"
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_db),
            "TEST": {"NAME": str(_db)},
            # As the demo (and the README) set it: the test process and the e2e servers
            # write to this one file at once, and a deferred transaction that must turn
            # into a write while another commits fails at once with "database is locked".
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"copilotedge-tests-{_PID}",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5-s timeout, as long as channels-redis blocks
            # for a message: without this, an idle consumer fails every 5 s.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": f"copilotedge-tests-{_PID}",
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

STATIC_URL = "static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

COPILOTEDGE_ACCOUNT_ID = "test-account"
COPILOTEDGE_API_TOKEN = "test-token"
COPILOTEDGE_API_BASE_URL = "https://upstream.test/client/v4"
COPILOTEDGE_KEEPALIVE_SECONDS = 15
# Reliability: a failing upstream costs a test milliseconds of backoff, not seconds (a
# longer Retry-After than the cap is handed to the client at once), and the response
# cache is off unless a test turns it on, so tests asking the same thing do not answer
# each other from the cache.
COPILOTEDGE_RETRY_BASE_DELAY = 0.01
COPILOTEDGE_RETRY_MAX_DELAY = 1.0
COPILOTEDGE_RESPONSE_CACHE = False

# A server process started by the suite (tests/servers.py) runs on the suite's test
# database and with the suite's overrides, handed over in the environment.
if os.environ.get("COPILOTEDGE_TEST_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["COPILOTEDGE_TEST_DATABASE_NAME"]
globals().update(json.loads(os.environ.get("COPILOTEDGE_TEST_OVERRIDES", "{}")))
