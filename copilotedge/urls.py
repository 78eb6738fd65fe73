"""URLs of the app; the demo mounts them at ``/copilotedge/``."""

from __future__ import annotations

from django.urls import path

from copilotedge import monitoring, views
from copilotedge.conversations import views as conversation_views
from copilotedge.copilotkit import views as copilotkit_views

app_name = "copilotedge"

urlpatterns = [
    path("v1/chat/completions", views.chat_completions, name="chat-completions"),
    path("v1/models", views.models, name="models"),
    path("ai/run/<path:model>", views.ai_run, name="ai-run"),
    # Conversations and preferences (conversation_views.py).
    path("conversations/", conversation_views.conversation_list, name="conversations"),
    path(
        "conversations/<uuid:conversation_id>/",
        conversation_views.conversation_detail,
        name="conversation",
    ),
    path("preferences/", conversation_views.preferences, name="preferences"),
    path("openapi.json", views.openapi_description, name="openapi"),
    path("health", monitoring.health, name="health"),
    path("metrics", monitoring.metrics_view, name="metrics"),
    # CopilotKit: the AG-UI routes, and the single route (AG-UI envelope or legacy GraphQL).
    path("copilotkit", copilotkit_views.single_route, name="copilotkit"),
    path("copilotkit/info", copilotkit_views.info, name="copilotkit-info"),
    path("copilotkit/agent/<str:agent_id>/run", copilotkit_views.agent_run, name="copilotkit-run"),
    path(
        "copilotkit/agent/<str:agent_id>/connect",
        copilotkit_views.agent_connect,
        name="copilotkit-connect",
    ),
    path(
        "copilotkit/agent/<str:agent_id>/stop/<path:thread_id>",
        copilotkit_views.agent_stop,
        name="copilotkit-stop",
    ),
]
