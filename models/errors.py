"""Errors raised by `models/` for bad models and bad data.

All are `ValueError`s so library users can catch them generically; the CLI turns any
`ModelError` into one clear line on stderr and exit code 2.
"""

from __future__ import annotations


class ModelError(ValueError):
    """A model or its data cannot be used: the message says what, what was expected, how to fix."""


class ConversionError(ModelError):
    """A Keras model cannot be converted into a streaming step model (names the layer and why)."""


class DataError(ModelError):
    """Input data is malformed (names the file and line where it can)."""
