"""movierec: the recommendation service (HTTP API, store, command line)."""

__version__ = "0.1.0"
