"""Object storages; see :mod:`syncd.storage.base` for the contract."""
