"""The life of a job, as idempotent steps over saved state."""
