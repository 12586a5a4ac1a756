"""The storage layer's exceptions; callers catch these, never driver errors."""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation could not be carried out."""


class InvalidDatabaseUrl(StorageError, ValueError):
    """DATABASE_URL is not a URL SQLAlchemy can connect with."""


class ItemNotFound(StorageError, LookupError):
    """No row has that id."""
