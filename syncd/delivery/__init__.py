"""Getting results out: the bucket, the outbox, mirroring and syncing."""
