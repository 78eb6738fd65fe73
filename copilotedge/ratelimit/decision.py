"""A rate-limit check's outcome, and the six ``x-ratelimit-*`` headers it renders.

Reset headers are durations as OpenAI writes them (``"250ms"``, ``"1s"``, ``"6m0s"``): the
time until the bucket is full again.
"""

from __future__ import annotations

from dataclasses import dataclass

from copilotedge import exceptions
from copilotedge.ratelimit.gcra import Bucket, Rate, format_duration

LIMIT_REQUESTS = "x-ratelimit-limit-requests"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
RESET_REQUESTS = "x-ratelimit-reset-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
RESET_TOKENS = "x-ratelimit-reset-tokens"


@dataclass
class Decision:
    """A check's outcome: the buckets for the headers and, when refused, the error."""

    requests_rate: Rate
    tokens_rate: Rate
    requests: Bucket | None = None
    tokens: Bucket | None = None
    error: exceptions.CopilotEdgeError | None = None
    reserved: int = 0

    @property
    def allowed(self) -> bool:
        return self.error is None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        pairs = ((self.requests_rate, self.requests), (self.tokens_rate, self.tokens))
        for (limit, remaining, reset), (rate, bucket) in zip(_HEADERS, pairs, strict=True):
            # No bucket: the caller is not limited, or the store is down and we fail open.
            bucket = bucket or Bucket(limit=rate.limit, remaining=rate.limit, reset=0.0)
            headers[limit] = str(bucket.limit)
            headers[remaining] = str(bucket.remaining)
            headers[reset] = format_duration(bucket.reset)
        return headers


_HEADERS = (
    (LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS),
    (LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS),
)
