"""``type: chime-swarm``: jobs on the CHIME/FRB analysis cluster through frb-master's swarm API. Its wire shapes:
:mod:`.api`; its tokens: :mod:`.auth`; the backend: :mod:`.backend`; its options: :mod:`.options`."""

from syncd.backends.chime_swarm.backend import ChimeSwarmBackend
from syncd.backends.chime_swarm.options import ChimeSwarmOptions

__all__ = ["ChimeSwarmBackend", "ChimeSwarmOptions"]
