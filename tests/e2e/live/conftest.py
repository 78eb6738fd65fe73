"""Fixtures for the live tests: credentials for the real Cloudflare Workers AI."""

from __future__ import annotations

import os

import pytest

from copilotedge.defaults import DEFAULT_BASE_URL


@pytest.fixture(autouse=True)
def workers_ai_settings() -> dict[str, str]:
    """The app's upstream settings from the ``CLOUDFLARE_*`` environment; skips every live
    test unless CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN are set.

    CLOUDFLARE_API_BASE_URL, if set, names the upstream (an AI Gateway, say).
    """
    account_id = os.environ.get("CLOUDFLARE_ACCOUNT_ID", "")
    api_token = os.environ.get("CLOUDFLARE_API_TOKEN", "")
    if not (account_id and api_token):
        pytest.skip(
            "live Workers AI test: set CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN to run it"
        )
    return {
        "COPILOTEDGE_API_BASE_URL": os.environ.get("CLOUDFLARE_API_BASE_URL", DEFAULT_BASE_URL),
        "COPILOTEDGE_ACCOUNT_ID": account_id,
        "COPILOTEDGE_API_TOKEN": api_token,
    }
