"""Taking job folders in: watching the inbox, the manifest, the spool."""
