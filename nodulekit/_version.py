"""The package version, in one place (read by ``nodulekit.__version__`` and the saved settings)."""

__version__ = "0.1.0"
