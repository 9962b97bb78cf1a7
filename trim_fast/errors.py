"""Errors a caller can tell apart: every mistake in what trim_fast was given (data, settings,
banks, a run directory, a model, the hub) raises a :class:`TrimError` subclass with a message
naming the file, line or setting and the problem. Anything else (a bug, running out of memory)
is not a ``TrimError``; the CLI prints a ``TrimError`` as one line with exit status 2 and lets
anything else show its traceback (exit status 1).

Each subclass also derives from the built-in type such errors were raised as before (``ValueError``
and so on), so code that caught those still does. This module imports nothing from the package:
it is the lowest layer.
"""
from __future__ import annotations


class TrimError(Exception):
    """Base of every error trim_fast raises for a mistake in its inputs or environment."""


class DataError(TrimError, ValueError):
    """Bad input data; the message names the source, the line or row, and the problem."""


class ConfigError(TrimError, ValueError):
    """A setting that is invalid, or settings that contradict each other."""


class BankMismatchError(TrimError, ValueError):
    """Fingerprint banks that do not fit the run: another model, tokenizer or setting."""


class RunDirectoryError(TrimError, OSError):
    """An output or work directory that holds another run, or cannot be written."""


class ModelError(TrimError, ValueError):
    """A model that cannot be used as given: unreadable or truncated weights, a vocabulary
    smaller than its tokenizer's, a device this build of torch has not."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A model or adapter path that does not exist."""


class UnsupportedModelError(ModelError):
    """A model (or attention implementation) whose saliency cannot be captured."""


class HubUnavailableError(TrimError, ConnectionError):
    """The Hugging Face hub did not answer within the time limits."""


__all__ = ["TrimError", "DataError", "ConfigError", "BankMismatchError", "RunDirectoryError",
           "ModelError", "ModelNotFoundError", "UnsupportedModelError", "HubUnavailableError"]
