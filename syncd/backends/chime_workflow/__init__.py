"""``type: chime-workflow``: CHIME/FRB Workflow Buckets. Its wire shapes: :mod:`.api`; the script a site runner
starts: :mod:`.launcher`; the backend: :mod:`.backend`; its options: :mod:`.options`."""

from syncd.backends.chime_workflow.backend import ChimeWorkflowBackend
from syncd.backends.chime_workflow.options import ChimeWorkflowOptions

__all__ = ["ChimeWorkflowBackend", "ChimeWorkflowOptions"]
