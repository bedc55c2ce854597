"""The project's exception types.

Every error a user can cause (bad tables, bad sizes, bad settings) is raised as a subclass of
:class:`HarmHorizonError`, with a message that names the problem and the fix. The CLI prints the
message on one line and exits with status 2; library callers can catch the base class.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EnumerationTooLarge",
    "HarmHorizonError",
    "InputError",
    "OutputError",
    "PrecisionError",
]


class HarmHorizonError(ValueError):
    """Base class of every user-facing error in harm-horizon."""


class InputError(HarmHorizonError):
    """Input arrays or files are missing, malformed, inconsistent or out of range."""


class EnumerationTooLarge(HarmHorizonError):
    """An exact enumeration would not fit in memory; raised before anything is allocated."""


class PrecisionError(HarmHorizonError):
    """float64 is required for an exact computation but JAX cannot provide it."""


class ConfigError(HarmHorizonError):
    """A configuration (objective, sizes, learning rate, ...) is invalid."""


class OutputError(HarmHorizonError):
    """An output path cannot or must not be written (a device, a link, the input itself, a
    missing or read-only folder, a full disk); refused before the computation where possible."""
