"""Settings of the copilotedge demo site; the environment is read here and only here."""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
DEV_SECRET_KEY = "django-insecure-copilotedge-demo-only"

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")

SECRET_KEY = env("DJANGO_SECRET_KEY", default=DEV_SECRET_KEY)
DEBUG = env.bool("DJANGO_DEBUG", default=True)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# Served over HTTPS (behind a proxy that terminates TLS and says so in X-Forwarded-Proto,
# as deploy/nginx.conf does): redirect plain HTTP, HSTS, cookies sent over HTTPS only.
if env.bool("DJANGO_HTTPS", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=60 * 60 * 24 * 365)
    # Both bind every subdomain to HTTPS too: the operator's call (check --deploy asks).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=False)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic",
    "django.contrib.staticfiles",
    "channels",
    "copilotedge",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Async-native static files (WhiteNoise's fork with ASGI support).
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "copilotedge.middleware.RateLimitMiddleware",  # after authentication
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DJANGO_CONN_MAX_AGE", default=0))
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool bounds the connections: Django gives each ASGI request a thread of its own,
    # so a burst of requests would otherwise open one connection each, past the server's
    # max_connections. Threads wait (off the event loop) for a free connection.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # required with a pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env.int("DJANGO_DB_POOL_SIZE", default=20),
        "timeout": 30,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the usage-ledger writes; NORMAL sync drops an fsync a commit.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        transaction_mode="IMMEDIATE",
        timeout=20,  # one writer at a time: wait for the lock rather than fail a burst
    )

REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "copilotedge-demo",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5-s timeout, as long as channels-redis blocks
            # waiting for a message: without this, an idle WebSocket fails every 5 s.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the apps' static folders, with DEBUG off too; no collectstatic step.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "copilotedge": {"handlers": ["console"], "level": "INFO"},
        # httpx logs every upstream request at INFO: too chatty for a proxy.
        "httpx": {"level": "WARNING"},
    },
}

# copilotedge
COPILOTEDGE_ACCOUNT_ID = env("CLOUDFLARE_ACCOUNT_ID", default="")
COPILOTEDGE_API_TOKEN = env("CLOUDFLARE_API_TOKEN", default="")
COPILOTEDGE_API_BASE_URL = env(
    "CLOUDFLARE_API_BASE_URL", default="https://api.cloudflare.com/client/v4"
)
COPILOTEDGE_MODEL = env("COPILOTEDGE_MODEL", default="@cf/meta/llama-3.1-8b-instruct")
COPILOTEDGE_RATE_LIMIT = env("COPILOTEDGE_RATE_LIMIT", default="60/m")
COPILOTEDGE_TOKEN_RATE_LIMIT = env("COPILOTEDGE_TOKEN_RATE_LIMIT", default="100000/m")
COPILOTEDGE_ALLOW_ANONYMOUS = env.bool("COPILOTEDGE_ALLOW_ANONYMOUS", default=False)
COPILOTEDGE_TRUST_X_FORWARDED_FOR = env.bool("COPILOTEDGE_TRUST_X_FORWARDED_FOR", default=False)
COPILOTEDGE_METRICS_TOKEN = env("COPILOTEDGE_METRICS_TOKEN", default="")
COPILOTEDGE_AGENTS = {
    "default": {
        "name": "default",
        "description": "A helpful assistant served by Cloudflare Workers AI.",
        "tools": [
            "project.tools.whoami",
            "project.tools.my_usage",
            "project.tools.forget_conversation",
        ],
    },
}
