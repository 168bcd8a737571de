"""``type: kotta``: Cloud Kotta (its REST API: :mod:`.api`; what a job carries: :mod:`.bundle`; the backend:
:mod:`.backend`)."""

from syncd.backends.kotta.backend import KottaBackend, KottaOptions

__all__ = ["KottaBackend", "KottaOptions"]
