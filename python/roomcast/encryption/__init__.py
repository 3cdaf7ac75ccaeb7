"""Encrypted delivery: what a scheme offers (`scheme`), the queue and task that seal
messages for encrypted clients (`sealing`) and the built-in ECDH scheme (`ecdh`)."""
