"""The built-in ECDH encryption scheme (`roomcast.encryption.ecdh`), under its
documented name `roomcast.crypto`."""

from .encryption.ecdh import (
    HKDF_INFO,
    IV_SIZE,
    KEY_SIZE,
    PUBLIC_KEY_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    DecryptionError,
    EcdhClient,
    EcdhScheme,
    b64decode,
    b64encode,
    derive_key,
    export_public_key,
    generate_private_key,
    hkdf_sha256,
    import_public_key,
    open_sealed,
    seal,
)

__all__ = [
    "HKDF_INFO",
    "IV_SIZE",
    "KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SALT_SIZE",
    "TAG_SIZE",
    "DecryptionError",
    "EcdhClient",
    "EcdhScheme",
    "b64decode",
    "b64encode",
    "derive_key",
    "export_public_key",
    "generate_private_key",
    "hkdf_sha256",
    "import_public_key",
    "open_sealed",
    "seal",
]
