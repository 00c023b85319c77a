"""One family of exceptions, so callers can catch everything gradwatch raises.

Each class also derives from the built-in exception a Python programmer would expect
(`TypeError` for the wrong kind of object, `ValueError` for a bad value), so
``except ValueError`` keeps working.
"""

from __future__ import annotations


class GradwatchError(Exception):
    """Base class of every error gradwatch raises on purpose."""


class GradwatchTypeError(GradwatchError, TypeError):
    """An argument is the wrong kind of object."""


class GradwatchValueError(GradwatchError, ValueError):
    """An argument has the right type but a value gradwatch cannot use."""


class UsageError(GradwatchError, RuntimeError):
    """The API was called in an order that cannot work (for instance `step()` before backward)."""


class LogFormatError(GradwatchError, ValueError):
    """A JSONL log is not a gradwatch log, or is damaged somewhere other than its last line."""


class ModelError(GradwatchError, RuntimeError):
    """The user's model raised while gradwatch ran it; the original error is chained."""
