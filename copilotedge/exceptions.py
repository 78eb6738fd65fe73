"""The errors every face of the app can raise, each knowing its HTTP status and code.

Views, the consumer and the middleware render them through ``to_dict`` into the
OpenAI error object, so a client sees one shape whatever went wrong.
"""

from __future__ import annotations

from typing import Any


class CopilotEdgeError(Exception):
    """Base class: something a client can be told about."""

    status_code = 500
    type = "server_error"
    code: str | None = "internal_error"
    default_message = "The server could not complete the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        upstream_code: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.upstream_code = upstream_code
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(CopilotEdgeError):
    """The request body or a parameter is not acceptable."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"
    default_message = "The request is not valid."


class RequestTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"
    default_message = "The request body is too large."


class AuthenticationFailed(CopilotEdgeError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"
    default_message = "A valid API key or a signed-in session is required."


class PermissionDenied(CopilotEdgeError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"
    default_message = "You may not do that."


class NotFound(CopilotEdgeError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"
    default_message = "Not found."


class AnswerStopped(CopilotEdgeError):
    """The answer was stopped from elsewhere: a cancel, or its conversation deleted."""

    status_code = 409
    type = "invalid_request_error"
    code = "cancelled"
    default_message = "The answer was stopped before it finished."


class ShuttingDown(CopilotEdgeError):
    """The server is stopping: a new request is refused, an answer past the grace period ends."""

    status_code = 503
    type = "server_error"
    code = "shutting_down"
    default_message = "The server is shutting down; try again shortly."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after", 1.0)
        super().__init__(message, **kwargs)


class AsgiRequired(CopilotEdgeError):
    """A streamed answer was asked of a site served over WSGI, which cannot stream it."""

    status_code = 501
    type = "server_error"
    code = "asgi_required"
    default_message = (
        "Streaming needs an ASGI server, and this site is served over WSGI. Serve it with "
        'daphne or uvicorn (for runserver, put "daphne" first in INSTALLED_APPS), or send '
        '"stream": false.'
    )


class RateLimited(CopilotEdgeError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    default_message = "Rate limit exceeded."


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"
    default_message = "The monthly budget is spent."


class ToolStepsExceeded(CopilotEdgeError):
    """The model kept calling server tools past ``COPILOTEDGE_MAX_TOOL_STEPS``."""

    status_code = 500
    type = "server_error"
    code = "max_tool_steps"
    default_message = "The model called tools too many times without answering."


class UpstreamError(CopilotEdgeError):
    """Workers AI (or the configured upstream) failed."""

    status_code = 502
    type = "upstream_error"
    code = "upstream_error"
    default_message = "The model provider failed to answer."
    retryable = True


class UpstreamConfigurationError(UpstreamError):
    """Upstream refused our credentials: an operator problem, not the client's."""

    code = "upstream_configuration"
    default_message = "The model provider rejected this server's credentials."
    retryable = False


class UpstreamRejected(UpstreamError):
    """Upstream refused the request itself (a 4xx other than auth and rate limits)."""

    status_code = 400
    type = "invalid_request_error"
    code = "upstream_rejected"
    default_message = "The model provider rejected the request."
    retryable = False


class ModelNotFound(UpstreamError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"
    default_message = "The model does not exist."
    retryable = False


class UpstreamRateLimited(UpstreamError):
    status_code = 429
    type = "rate_limit_error"
    code = "upstream_capacity"
    default_message = "The model provider is out of capacity; try again shortly."


class UpstreamQuotaExceeded(UpstreamRateLimited):
    code = "upstream_quota_exceeded"
    default_message = "The model provider's daily quota is used up."
    retryable = False


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"
    default_message = "The model provider did not answer in time."


class ServiceUnavailable(UpstreamError):
    """Failing fast: the circuit is open or a required service is down."""

    status_code = 503
    code = "service_unavailable"
    default_message = "The service is temporarily unavailable."


class DatabaseUnavailable(ServiceUnavailable):
    """The database is down or its pool had no connection in time: retry shortly."""

    code = "database_unavailable"
    default_message = "The service is busy; try again shortly."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after", 1.0)
        super().__init__(message, **kwargs)
