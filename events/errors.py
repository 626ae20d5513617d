"""The errors a user can mend, by type: what the ``nsm`` command prints as one line.

A ``UserError`` says that the input is at fault, not the code: a file, an option, a configuration key or value, a
folder, a source; its message names which and says what is wrong. ``nsm`` prints it as ``nsm <command>: error:
<message>``, exit status 2 (``pipelines.cli``); any other exception is unexpected and shows its traceback. The
project raises the errors its users can mend only as these types, each also the built-in type a caller would catch:

  InputError            a value out of its range or of the wrong kind (an option, a configuration key, an argument,
                        a field read from a file): a ``ValueError``
  MissingInputError     a file or folder that is not there: a ``FileNotFoundError``
  ExistingOutputError   an output path that holds something the command must not replace: a ``FileExistsError``

and the typed errors of each surface derive from them or from ``UserError``: ``events.EventFormatError``,
``events.DatasetNotFoundError``, ``events.cache.CacheError``, ``events.atomic.OutputError``,
``events.live.LiveSourceError``, ``pipelines.export.ExportError``, ``pipelines.training.TrainingDiverged``.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave, named in the message; the command prints it as one line."""


class InputError(UserError, ValueError):
    """A value out of its range or of the wrong kind: an option, a configuration key, an argument, a file's field."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder that the user named, or that a layout expects, is not there."""


class ExistingOutputError(UserError, FileExistsError):
    """An output path holds something the command must not replace."""
