from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    # The chat page: plain HTML + JS over the WebSocket (project/static/project/chat.js).
    path(
        "",
        login_required(TemplateView.as_view(template_name="project/chat.html")),
        name="chat",
    ),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="project/login.html"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("copilotedge/", include("copilotedge.urls")),
]
