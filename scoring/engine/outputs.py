"""The error for a net whose output is not a number (shared by the score and explain passes)."""

from __future__ import annotations

from ..errors import InvalidRequest


class NonFiniteOutput(InvalidRequest):
    """The net's output is not a number for an ad (an overflow inside it)."""


def overflow(bad: int) -> NonFiniteOutput:
    """The error naming ad ``bad``, the first whose output is not a number."""
    return NonFiniteOutput(f"ads[{bad}]: the model's output is not a number for this ad (an "
                           "overflow inside the net; are its dense values far outside what the "
                           "model was trained on?)")
