"""Errors that are the user's to fix.

Every error a user can cause (a bad file, an unknown name, a bad override, mismatched shapes) is a
:class:`UserError`. The command line prints it as one line on stderr and exits with code 2; library
callers can catch it like any other exception.

A :class:`PluginError` is the other kind: a plugin's model broke the contract with core. It is
also one line, with exit code 1 (a bug to report to the plugin's authors, not the user's to fix).
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "UnknownNameError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "PluginError",
]


class UserError(Exception):
    """An error caused by the user's input; its message is one self-contained line."""


class UnknownNameError(UserError, KeyError):
    """A registry lookup for a name that nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(UserError):
    """A bad configuration: unknown key, wrong type, malformed ``key=value`` override."""


class DataError(UserError):
    """A file or array that cannot be used as input; the message names the file."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class PluginError(Exception):
    """A plugin's code broke the contract with core; the message names the model and plugin."""
