"""``type: cybergis``: jobs on an HPC through a CyberGIS-Compute gateway (see :mod:`.backend`)."""

from syncd.backends.cybergis.backend import CybergisBackend
from syncd.backends.cybergis.options import CybergisOptions

__all__ = ["CybergisBackend", "CybergisOptions"]
