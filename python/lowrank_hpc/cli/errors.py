"""The errors a user of the command line can cause, each printed as one line by ``cli.main``.

``UsageError`` (exit status 2): the command line itself must change (an option value, a rank
the data cannot hold). ``DataError`` (exit status 1): an input file, an output path or the
environment must change (a bad line, a missing file, an unwritable directory).
Both are ValueErrors, so the readers and the model file behave as any library function when
called from Python.
"""
from __future__ import annotations


class UserError(ValueError):
    """An error a user can fix, reported as ``lowrank-hpc: error: <message>``."""

    exit_code = 1


class DataError(UserError):
    """A file that cannot be read or written, or whose content is not what the format says."""

    exit_code = 1


class UsageError(UserError):
    """A command line that cannot run: a missing argument or a bad option value."""

    exit_code = 2
