"""The config ``syncd init`` writes: the embedded default, no server needed."""

INIT_CONFIG = """\
# syncd configuration — see README.md ("Config reference") for every key.
# Paths are relative to this file; ${VAR} is taken from the environment.
state_dir: .state

storages:
  local: {type: file, root: buckets}     # each subdirectory of root is a bucket

backends:
  local: {type: local, max_parallel: 2}

inboxes:
  - name: default
    path: inbox
    outbox: outbox
    failed: failed
    backend: local
    storage: local
    bucket: results                      # results go to <bucket>/<job>/ and are mirrored to outbox/<bucket>/<job>/
    settle: 2s
    observer: auto                       # auto | native | polling
"""

INIT_FOLDERS = ("inbox", "outbox", "failed", "buckets")
