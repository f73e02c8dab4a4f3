"""The one exception type a user may see.

Anything raised as :class:`IdiolectError` carries a message written for a person: the CLI prints it as one
``error: ...`` line and the UI shows it as a notice. Anything else is a bug and keeps its traceback.
"""


class IdiolectError(Exception):
    """A failure with a message fit to show the user as it is."""


class ImportFailed(IdiolectError):
    """A whole file could not be read (missing, unsupported type, binary ...)."""


class ReadOnlyDatabase(IdiolectError):
    """The database cannot be written where it is (permissions, an immutable folder, a read-only mount)."""
