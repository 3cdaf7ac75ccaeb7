"""TLS for wss:// and https://: an `ssl.SSLContext` from certificate files, with one-line
errors that name the file at fault."""

from __future__ import annotations

import os
import ssl


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used (the message names it)."""


def _readable(kind: str, path: str) -> None:
    if not os.path.isfile(path):
        raise TlsError(f"{kind} not found: {path}")
    if not os.access(path, os.R_OK):
        raise TlsError(f"{kind} not readable: {path}")


def server_context(
    certfile: str,
    keyfile: str | None = None,
    *,
    password: str | None = None,
    ca_certs: str | None = None,
) -> ssl.SSLContext:
    """A server context for `certfile` (PEM, the chain after the certificate) and `keyfile`
    (PEM; None when the key is in `certfile`). With `ca_certs`, clients must present a
    certificate signed by one of those CAs."""
    _readable("certificate file", certfile)
    if keyfile is not None:
        _readable("key file", keyfile)
        _check_key(keyfile, password)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A callable, never None: OpenSSL would otherwise prompt on the terminal.
        context.load_cert_chain(certfile, keyfile, lambda: password or "")
    except ssl.SSLError as exc:
        raise TlsError(
            f"cannot use certificate {certfile} with key {keyfile or certfile}: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot load certificate {certfile}: {exc.strerror or exc}") from None
    if ca_certs is not None:
        _readable("CA file", ca_certs)
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"cannot load CA certificates {ca_certs}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _check_key(keyfile: str, password: str | None) -> None:
    """Clear errors for the usual mistakes with a key file (OpenSSL only says "PEM lib")."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(keyfile, "rb") as file:
        data = file.read()
    try:
        load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        if password:  # a password for a key that needs none: harmless, OpenSSL ignores it
            return
        raise TlsError(f"key file is encrypted and no password was given: {keyfile}") from None
    except ValueError:
        if password and b"ENCRYPTED" in data:
            raise TlsError(f"cannot decrypt key file (wrong password?): {keyfile}") from None
        raise TlsError(f"key file holds no PEM private key: {keyfile}") from None
    except UnsupportedAlgorithm as exc:
        raise TlsError(f"unsupported key in {keyfile}: {exc}") from None
