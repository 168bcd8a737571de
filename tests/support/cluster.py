"""Several daemons on one shared inbox: configs, a job that records each run, and the checks of "exactly once"."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.harness import SyncdProcess, drop_job, read_result

#: short enough for a test: a daemon acts 1.5 s past its last renewal; its lease lapses after 2.5 s unchanged
TAKEOVER = {"enabled": True, "renew": "0.3s", "lease": "1.5s", "grace": "1s"}


def cluster_config(
    root: Path,
    node: str,
    *,
    backends: dict | None = None,
    inboxes: dict[str, str] | None = None,
    takeover: dict | None = None,
    **extra,
) -> Path:
    """``root/<node>.yaml``: a daemon with its own state folder on the shared inboxes, outbox and buckets.

    ``inboxes`` maps each inbox folder to its backend (default: ``inbox`` → ``local``). The local backend's
    work folders are shared too (``work/``): a daemon that takes a local job over finds it there and follows
    it instead of running it again."""
    inboxes = inboxes or {"inbox": "local"}
    for folder in ("outbox", "failed", "buckets", "work", *inboxes):
        (root / folder).mkdir(parents=True, exist_ok=True)
    config = {
        "state_dir": f".state-{node}",
        "storages": {"local": {"type": "file", "root": "buckets"}},
        "backends": backends or {"local": {"type": "local", "max_parallel": 4, "workdir_root": "work"}},
        "inboxes": [
            {
                "name": folder.replace("inbox-", "") if folder != "inbox" else "shared",
                "path": folder,
                "outbox": "outbox",
                "failed": "failed",
                "backend": backend,
                "storage": "local",
                "bucket": "results",
                "settle": "0.3s",
                "rescan": "2s",
                "journal": False,
            }
            for folder, backend in inboxes.items()
        ],
        "poll": {"first": "0.2s", "max": "1s"},
        "retry": {"initial": "0.2s", "max": "2s"},
        "http": {"listen": "127.0.0.1:0"},
        "takeover": {**TAKEOVER, **(takeover or {}), "node": node},
        **extra,
    }
    path = root / f"{node}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def drop_counted(root: Path, name: str, seconds: float = 0.5, inbox: str = "inbox") -> None:
    """A job that appends its name to ``ledger.txt`` (one line per run), waits, and writes ``out.txt``."""
    ledger = root / "ledger.txt"
    command = f"echo {name} >> {ledger}; sleep {seconds}; echo {name} > out.txt"
    drop_job(root / inbox, name, {"command": command}, {"in.txt": f"input of {name}\n"})


def delivered(root: Path) -> dict[str, dict]:
    """The result records in the outbox, by folder."""
    out: dict[str, dict] = {}
    results = root / "outbox" / "results"
    if not results.exists():
        return out
    for folder in results.iterdir():
        if (folder / "syncd-result.json").exists():
            out[folder.name] = read_result(folder)
    return out


def assert_exactly_once(root: Path, names: list[str]) -> dict[str, dict]:
    """Every job ran once (ledger), was delivered once (one folder each, its own output), and succeeded."""
    runs = (root / "ledger.txt").read_text().split()
    twice = sorted({name for name in runs if runs.count(name) > 1})
    assert not twice, f"jobs that ran more than once: {twice}"
    assert sorted(runs) == sorted(names), f"jobs that never ran: {sorted(set(names) - set(runs))}"
    results = delivered(root)
    folders = sorted((root / "outbox" / "results").iterdir())
    assert sorted(p.name for p in folders) == sorted(names), "no job delivered twice or to a second folder"
    for name in names:
        result = results[name]
        assert result["state"] == "succeeded", result
        assert (root / "outbox" / "results" / name / "out.txt").read_text() == f"{name}\n"
    return results


def share_records(root: Path) -> list[str]:
    """Handoff records still on the shares of every inbox (none once every job is finished)."""
    return sorted(p.name for p in root.glob("inbox*/.syncd/owners/*"))


def daemons(root: Path, nodes: list[str], **config) -> dict[str, SyncdProcess]:
    return {node: SyncdProcess(cluster_config(root, node, **config)) for node in nodes}


def stop_all(procs: dict[str, SyncdProcess] | list[SyncdProcess]) -> None:
    """Stop every daemon (each checked as ``stop`` does), even when one of the checks fails."""
    failures = []
    for proc in procs.values() if isinstance(procs, dict) else procs:
        try:
            proc.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
