"""The states of a job, in the order of its life (DESIGN.md's vocabulary)."""

CLAIMING = "claiming"
CLAIMED = "claimed"
STAGING = "staging"
STAGED = "staged"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
QUEUED = "queued"
RUNNING = "running"
COLLECTING = "collecting"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
REJECTED = "rejected"
VALIDATED = "validated"  # a dry run: checked and reported, never run
HELD = "held"
TAKEN_OVER = "taken_over"  # another daemon of the shared inbox took the job over: this one never touches it again

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, REJECTED, VALIDATED})
REMOTE = frozenset({SUBMITTED, QUEUED, RUNNING})
ACTIVE = frozenset({CLAIMED, STAGING, STAGED, SUBMITTING, SUBMITTED, QUEUED, RUNNING, COLLECTING})
