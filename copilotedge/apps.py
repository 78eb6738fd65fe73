from __future__ import annotations

from django.apps import AppConfig


class CopilotEdgeConfig(AppConfig):
    name = "copilotedge"
    verbose_name = "CopilotEdge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_delete, post_save

        from copilotedge.auth import forget_key, forget_user_keys
        from copilotedge.background import note_connection
        from copilotedge.checks import register_checks
        from copilotedge.conversations.preferences import forget_preference
        from copilotedge.models import ApiKey, Preference

        register_checks()
        post_save.connect(forget_key, sender=ApiKey, dispatch_uid="copilotedge-forget-key")
        post_delete.connect(forget_key, sender=ApiKey, dispatch_uid="copilotedge-forget-key-del")
        user_model = get_user_model()
        post_save.connect(forget_user_keys, sender=user_model, dispatch_uid="copilotedge-user-keys")
        post_delete.connect(
            forget_user_keys, sender=user_model, dispatch_uid="copilotedge-user-keys-del"
        )
        post_save.connect(
            forget_preference, sender=Preference, dispatch_uid="copilotedge-forget-preference"
        )
        post_delete.connect(
            forget_preference, sender=Preference, dispatch_uid="copilotedge-forget-preference-del"
        )
        connection_created.connect(note_connection, dispatch_uid="copilotedge-connection")
