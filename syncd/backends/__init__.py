"""Compute backends; see :mod:`syncd.backends.base` for the contract."""
