"""``type: qarnot``: jobs on Qarnot's cloud (see :mod:`syncd.backends.qarnot.backend`)."""

from syncd.backends.qarnot.backend import QarnotBackend, QarnotOptions

__all__ = ["QarnotBackend", "QarnotOptions"]
