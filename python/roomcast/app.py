"""Re-exports `roomcast.compat.app` (the application layer) under its old name."""

from .compat.app import Application, ApplicationError, Binding, PostStartHook

__all__ = ["Application", "ApplicationError", "Binding", "PostStartHook"]
