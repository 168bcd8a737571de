"""``type: arc``: an ARC-CE (NorduGrid A-REX) through its REST interface."""

from syncd.backends.arc.backend import ArcBackend
from syncd.backends.arc.options import ArcOptions

__all__ = ["ArcBackend", "ArcOptions"]
