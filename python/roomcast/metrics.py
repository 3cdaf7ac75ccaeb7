"""The Prometheus metrics (`roomcast.serving.metrics`), under its
documented name `roomcast.metrics`."""

from .serving.metrics import (
    AUTH_OUTCOMES,
    RECEIVED_KINDS,
    Counters,
    Exporter,
    samples,
)

__all__ = [
    "AUTH_OUTCOMES",
    "RECEIVED_KINDS",
    "Counters",
    "Exporter",
    "samples",
]
