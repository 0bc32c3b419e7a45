"""The product's one error base class: a problem with the input, the data or the setup that the user can fix.

Every error the product raises on purpose is a NewsrecError (bad data, a missing file, a wrong setting, a
refused model), with a message that says what is wrong and how to fix it. The CLI dispatcher
(pipelines/cli.py) prints such an error in one line and exits 1; anything else is a bug and keeps its
traceback. The subclasses are also the built-in error they stand for, so `except ValueError` still works.
"""

from __future__ import annotations


class NewsrecError(Exception):
    """A problem the user can fix; the message says what and how."""


class InputError(NewsrecError, ValueError):
    """Bad input: a value, a file's content, an argument or a setting out of its contract."""


class MissingInputError(NewsrecError, FileNotFoundError):
    """An input that is not there: a file, a folder, an hour, a snapshot's data."""


class ConfigError(NewsrecError, KeyError):
    """A setting, section or named entry that the configuration does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0]) if self.args else ""
