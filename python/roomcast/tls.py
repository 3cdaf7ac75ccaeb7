"""TLS contexts from certificate files (`roomcast.transport.tls`), under its
documented name `roomcast.tls`."""

from .transport.tls import (
    TlsError,
    server_context,
)

__all__ = [
    "TlsError",
    "server_context",
]
