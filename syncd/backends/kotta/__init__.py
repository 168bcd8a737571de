"""``type: kotta``: Cloud Kotta. Its REST API: :mod:`.api`; what a job carries: :mod:`.bundle`; how inputs travel:
:mod:`.stagein`; the backend: :mod:`.backend`; its options: :mod:`.options`."""

from syncd.backends.kotta.backend import KottaBackend
from syncd.backends.kotta.options import KottaOptions

__all__ = ["KottaBackend", "KottaOptions"]
