from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

urlpatterns = [
    path("admin/", admin.site.urls),
    path("copilotedge/", include("copilotedge.urls")),
]

# Test-only: a built front end (the CopilotKit example) served from the same origin as the
# endpoint it talks to; tests/test_copilotkit_browser.py sets TEST_EXAMPLE_DIST.
if getattr(settings, "TEST_EXAMPLE_DIST", None):
    urlpatterns += [
        path(
            "example/", serve, {"document_root": settings.TEST_EXAMPLE_DIST, "path": "index.html"}
        ),
        re_path(r"^example/(?P<path>.+)$", serve, {"document_root": settings.TEST_EXAMPLE_DIST}),
    ]
