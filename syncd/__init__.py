"""syncd: drop a folder, get results."""

__version__ = "0.1.0"
