"""The package version (one definition; ``qdm_med.__version__`` re-exports it)."""

__version__ = "0.1.0"
