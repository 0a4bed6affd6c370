"""Python client for the LinguaMesh session protocol."""

from .session import ClientError, SessionClient

__all__ = ["ClientError", "SessionClient"]
