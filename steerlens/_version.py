"""The package version, in a module of its own so submodules can read it without importing the
top-level package (which imports them): `steerlens.__version__` re-exports it. Keep it equal to
`version` in pyproject.toml (tests/test_structure.py checks)."""

__version__ = "0.2.0"
