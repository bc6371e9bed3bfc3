"""steerlens: activation-steering research on TransformerLens models."""

__version__ = "0.1.0"
