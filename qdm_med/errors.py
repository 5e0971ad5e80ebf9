"""Errors that the command line turns into one-line messages.

Every check on user input raises :class:`QDMError` (or a subclass) with a message that names the file
and the problem. The CLI prints ``error: <message>`` and exits non-zero; it never shows a traceback
for these.
"""

from __future__ import annotations


class QDMError(Exception):
    """A user-facing error: ``str(err)`` is a complete one-line message."""


class InputError(QDMError):
    """The input file or folder cannot be used (missing, unreadable, wrong kind)."""


class OutputError(QDMError):
    """The output cannot be written (exists without ``--overwrite``, folder not writable)."""


class ConfigError(QDMError):
    """A bundle, checkpoint or option does not fit (unsupported scale, untrained first stage)."""
