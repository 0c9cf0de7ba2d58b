"""Errors of the real-model layer (a small module of its own so that loading and the model
cache can both raise them without importing each other)."""


class ModelLoadError(RuntimeError):
    """A model could not be resolved or loaded; the message says what to do."""
