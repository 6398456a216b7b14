"""Errors a client or operator can cause, each carrying its HTTP status.

One handler in the API turns any :class:`ScoringError` into ``{"error": message}`` with its status;
anything else is a bug, logged with its traceback and answered with a generic 500.
"""

from __future__ import annotations


class ScoringError(Exception):
    """Base class: ``message`` names the field or thing that was wrong and what was expected."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class InvalidRequest(ScoringError):
    """The request body is well-formed JSON but does not fit the model or the contract."""

    status_code = 422


class MalformedRequest(ScoringError):
    """The body is not valid JSON, or not the JSON shape the endpoint takes."""

    status_code = 400


class PayloadTooLarge(ScoringError):
    status_code = 413


class ModelNotFound(ScoringError):
    status_code = 404


class NotReady(ScoringError):
    status_code = 503


class Unauthorized(ScoringError):
    status_code = 401


class Forbidden(ScoringError):
    status_code = 403


class UpstreamError(ScoringError):
    """An upstream (TF Serving) failed and no fallback model was configured."""

    status_code = 502


class UpstreamTimeout(UpstreamError):
    status_code = 504
