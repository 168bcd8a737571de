"""Named one-line mutations of the code behind the README's guarantees; each must fail at least one test.

Each mutant is applied to a copy of the checkout (the checkout itself is never touched, so an interrupted
run leaves no broken code behind), then the tests that guard that line run against the copy. A mutant the
tests survive means a guarantee can break unnoticed: the run fails and names it.

    .venv/bin/python scripts/mutants.py            # every mutant
    .venv/bin/python scripts/mutants.py NAME ...   # only these
    .venv/bin/python scripts/mutants.py --list     # the table, as in the README
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    guards: str  # the promise the line keeps
    path: str
    line: str  # the exact original text, found once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: the tests expected to catch it


MUTANTS = (
    Mutant(
        "submit-without-lookup",
        "a job the service accepted before a crash is found, never submitted twice",
        "syncd/engine/submission.py",
        "    ref = backend.find(spec)\n",
        "    ref = None\n",
        ("tests/conformance/test_kotta.py", "-k", "killed_after_the_service_accepted"),
    ),
    Mutant(
        "transition-ignores-state",
        "a job moves only from the state the caller saw (no step runs twice)",
        "syncd/state/store.py",
        'f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ? RETURNING',
        'f"UPDATE jobs SET {assignments} WHERE id = ? AND ? IS NOT NULL RETURNING',
        ("tests/unit/test_store.py",),
    ),
    Mutant(
        "settle-ignores-mtime",
        "a file rewritten in place during settle restarts the quiet period",
        "syncd/intake/watch.py",
        "st.st_size, st.st_mtime_ns))",
        "st.st_size, 0))",
        ("tests/unit/test_watch.py",),
    ),
    Mutant(
        "claim-without-loser",
        "a claim is one rename: the daemon that loses it knows",
        "syncd/intake/spool.py",
        "        os.rename(source, dest)\n        fsync_dir(self.claimed)\n",
        "        os.rename(source, dest) if source.exists() else None\n        fsync_dir(self.claimed)\n",
        ("tests/unit/test_spool.py",),
    ),
    Mutant(
        "record-despite-failed-fetch",
        "syncd-result.json is written only after every output is in place",
        "syncd/delivery/outbox.py",
        "        report.raise_for_failures()\n",
        "        pass\n",
        ("tests/unit/test_outbox.py",),
    ),
    Mutant(
        "breaker-opens-late",
        "the breaker opens after `threshold` transport failures in a row",
        "syncd/engine/breaker.py",
        "self._failures < self.threshold or",
        "self._failures <= self.threshold or",
        ("tests/unit/test_breaker.py",),
    ),
    Mutant(
        "retry-budget-never-spent",
        "transient failures are retried only within the retry budget, then the job is held",
        "syncd/retry.py",
        "now - failing_since >= policy.budget",
        "now - failing_since >= policy.budget * 1000",
        ("tests/unit/test_retry.py",),
    ),
    Mutant(
        "glob-may-leave-the-job",
        "a manifest cannot name a file outside the job folder",
        "syncd/intake/manifest.py",
        '    if ".." in PurePosixPath(pattern).parts:\n',
        "    if False:\n",
        ("tests/unit/test_manifest.py",),
    ),
    Mutant(
        "poll-one-job-per-call",
        "every due job of a backend is polled in one call",
        "syncd/engine/polling.py",
        "statuses = backend.poll([remote_ref(j) for j in due])",
        "statuses = {k: v for j in due for k, v in backend.poll([remote_ref(j)]).items()}",
        ("tests/unit/test_engine.py", "-k", "one_call"),
    ),
    Mutant(
        "durable-commit-unflushed",
        "a state change is on disk before the side effect that depends on it (the log is flushed)",
        "syncd/state/commits.py",
        "        if self._flush_wanted and self._wal is not None:\n",
        "        if False:\n",
        ("tests/unit/test_group_commit.py", "tests/unit/test_store.py"),
    ),
)


def copy_checkout(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", "*.egg-info")
    for entry in ("syncd", "tests", "pyproject.toml"):
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, dest / entry, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(source, dest / entry)


def pytest(tree: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    # PYTHONPATH puts the copy ahead of the editable install, for the daemons and runners the tests start too.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="print the mutants as a Markdown table")
    options = parser.parse_args()
    chosen = [m for m in MUTANTS if not options.names or m.name in options.names]
    if unknown := set(options.names) - {m.name for m in MUTANTS}:
        parser.error(f"no mutant named {', '.join(sorted(unknown))}; --list shows them")
    if options.list:
        print("| mutant | what it breaks | file | killed by |\n|---|---|---|---|")
        for m in chosen:
            print(f"| `{m.name}` | {m.guards} | `{m.path}` | `{' '.join(m.tests)}` |")
        return 0
    for m in chosen:
        if (ROOT / m.path).read_text().count(m.line) != 1:
            print(f"mutant {m.name}: the line it mutates is not found once in {m.path}; update scripts/mutants.py")
            return 2
    survived: list[str] = []
    with tempfile.TemporaryDirectory(prefix="syncd-mutants-") as scratch:
        tree = Path(scratch) / "tree"
        copy_checkout(tree)
        baseline = pytest(tree, tuple(arg for m in chosen for arg in m.tests if arg.startswith("tests/")))
        if baseline.returncode != 0:
            print(f"the guarding tests fail without any mutant; fix them first:\n{baseline.stdout[-3000:]}")
            return 2
        for m in chosen:
            target = tree / m.path
            original = target.read_text()
            target.write_text(original.replace(m.line, m.mutated, 1))
            started = time.monotonic()
            try:
                done = pytest(tree, m.tests)
            finally:
                target.write_text(original)
            seconds = time.monotonic() - started
            if done.returncode == 1:
                print(f"killed    {m.name:<30} {seconds:5.1f} s")
            elif done.returncode == 0:
                print(f"SURVIVED  {m.name:<30} {seconds:5.1f} s  ({m.guards}: no test in {' '.join(m.tests)} fails)")
                survived.append(m.name)
            else:
                print(
                    f"ERROR     {m.name:<30} pytest exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
                survived.append(m.name)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
