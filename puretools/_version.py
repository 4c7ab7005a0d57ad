"""The package version, in a module of its own so that low-level modules (the cache's keys) can read it."""

__version__ = "0.1.0"
