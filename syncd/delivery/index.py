"""The delivery index: what syncd last wrote at each local path (size, ETag, mtime), kept in the state database.

A mirror run reads the rows under its destination in one query, skips objects whose size and ETag are
unchanged, and records what it fetched in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from syncd.state.store import Store

#: (size, etag, mtime_ns) of a delivered file
IndexRow = tuple[int, str, int]


class DeliveryIndex:
    def __init__(self, store: Store):
        self.store = store

    def under(self, prefix: str) -> dict[str, IndexRow]:
        """Every row whose path starts with ``prefix`` (one query for a whole mirror run)."""
        conn = self.store.reader()
        if prefix:  # a range on the primary key, so the index is used instead of a scan
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            rows = conn.execute(
                "SELECT path, size, etag, mtime_ns FROM delivered WHERE path >= ? AND path < ?", (prefix, upper)
            ).fetchall()
        else:
            rows = conn.execute("SELECT path, size, etag, mtime_ns FROM delivered").fetchall()
        return {r["path"]: (r["size"], r["etag"], r["mtime_ns"]) for r in rows}

    def record_many(self, rows: Iterable[tuple[str, int, str, int]]) -> None:
        """Record many deliveries in one transaction (one fsync instead of one per file)."""
        rows = list(rows)
        if rows:
            with self.store.writing() as conn:
                conn.executemany("INSERT OR REPLACE INTO delivered VALUES (?, ?, ?, ?)", rows)

    def forget(self, paths: Iterable[str]) -> None:
        with self.store.writing() as conn:
            conn.executemany("DELETE FROM delivered WHERE path = ?", [(p,) for p in paths])
