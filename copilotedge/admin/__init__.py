"""The admin: one ``ModelAdmin`` per model, each self-contained.

Django's autodiscovery imports this module, and importing the ``admin_*`` modules below
registers their classes: API keys, conversations and preferences, the usage ledger and
report. The admin index sorts models by name, so the order of registration does not show.
"""

from __future__ import annotations

from copilotedge.admin.conversations import ConversationAdmin, MessageInline, PreferenceAdmin
from copilotedge.admin.keys import ApiKeyAdmin
from copilotedge.admin.usage import UsageRecordAdmin, UsageReportAdmin

# The classes were defined here; they stay importable from copilotedge.admin.
__all__ = [
    "ApiKeyAdmin",
    "ConversationAdmin",
    "MessageInline",
    "PreferenceAdmin",
    "UsageRecordAdmin",
    "UsageReportAdmin",
]
