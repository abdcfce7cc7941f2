"""The ``regzoo`` command line (Typer).

A user error (bad file, unknown name, bad override) is one line on stderr and exit code 2. A
failure in a plugin's code (a :class:`~regzoo.errors.PluginError`, or an exception raised in the
plugin's modules) is one line naming the plugin and its version, exit code 1; anything else is an
internal error of regzoo, exit code 1. ``--debug`` anywhere on the command line shows the
traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

import typer

from ..errors import PluginError, UserError
from . import files  # noqa: F401  (registers register/apply)
from .app import app

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regzoo`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        result = app(args=args, prog_name="regzoo", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.Abort:
        print("regzoo: aborted", file=sys.stderr)
        code = 130
    except Exception as err:
        # Usage errors of Typer's (possibly vendored) click carry format_message and exit_code.
        usage = hasattr(err, "format_message") and hasattr(err, "exit_code")
        if not (usage or isinstance(err, UserError)):
            if debug or os.environ.get("REGZOO_DEBUG"):
                raise
            print(f"regzoo: {_fault(err)} (rerun with --debug)", file=sys.stderr)
            return _exit(1, argv)
        if debug:
            traceback.print_exc()
        message = err.format_message() if usage else str(err)
        print(f"regzoo: error: {' '.join(message.split())}", file=sys.stderr)
        code = 2
    return _exit(code, argv)


def _fault(err: Exception) -> str:
    """One line for an error that is not the user's: the plugin's, or regzoo's own."""
    from ..faults import plugin_of_traceback

    text = " ".join(str(err).split())
    if isinstance(err, PluginError):
        return f"error: {text}"
    where = plugin_of_traceback(err.__traceback__)
    what = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return f"error in {where}: {what}" if where else f"internal error: {what}"


def _exit(code: int, argv: Sequence[str] | None) -> int:
    if argv is None:
        sys.exit(code)
    return code
