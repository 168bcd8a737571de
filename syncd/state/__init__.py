"""What syncd remembers: the SQLite store and the per-job journal."""
