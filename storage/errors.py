"""The root of the project's exceptions, and the storage layer's own.

Every error minalesh-workers raises on purpose derives from ``MinaleshError``.
Whether retrying can help is part of the error's class (``TransientError`` or
``PermanentError``), decided where the error is raised: the domain rules that
live here (an order that does not exist yet, a payment that does not match)
know it, and the backoff middleware reads nothing but the class. Driver errors
never leave this package as such; callers catch these.
"""

from __future__ import annotations


class MinaleshError(Exception):
    """Base of every error minalesh-workers raises on purpose."""


class TransientError(MinaleshError):
    """Worth retrying later on the backoff schedule (provider down, 5xx, an order not committed yet)."""


class PermanentError(MinaleshError):
    """Retrying cannot help (the request or the data is wrong as such): give up now."""


class StorageError(MinaleshError):
    """A storage operation could not be carried out."""


class InvalidDatabaseUrl(StorageError, ValueError):
    """DATABASE_URL is not a URL SQLAlchemy can connect with."""


class ItemNotFound(StorageError, LookupError):
    """No row has that id."""
