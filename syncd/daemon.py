"""The syncd process: composition root, scheduler, signals, orderly shutdown.

Signal handlers only set flags; the main thread acts. The first SIGTERM/SIGINT
drains (stop intake, let running steps finish for a few seconds, leave running
jobs running: they are re-attached at the next start); a second one exits at once.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler
from loguru import logger

from syncd import plugins
from syncd.backends.base import Backend
from syncd.config import Config, load_config
from syncd.engine import Engine
from syncd.spool import SpoolError
from syncd.storage.base import Storage
from syncd.store import Store
from syncd.watch import InboxWatcher

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_HARD_STOP = 130
DRAIN_SECONDS = 5.0


def load(config_path: Path | str, env: dict[str, str] | None = None) -> Config:
    return load_config(config_path, plugins.options_model, env=env)


def build_storages(config: Config) -> dict[str, Storage]:
    return {name: plugins.load("storage", opts.type)(name, opts) for name, opts in config.storage_options.items()}


def build_backends(config: Config) -> dict[str, Backend]:
    return {
        name: plugins.load("backend", opts.type)(name, opts, config.state_dir / "backends" / name)
        for name, opts in config.backend_options.items()
    }


class AlreadyRunning(Exception):
    pass


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self._stop = threading.Event()
        self._signals = 0
        self._lock_file: Any = None
        self.store: Store | None = None
        self.engine: Engine | None = None
        self.watchers: list[InboxWatcher] = []
        self.scheduler: BackgroundScheduler | None = None

    def _take_lock(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.state_dir / "syncd.lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise AlreadyRunning(
                f"another syncd (pid {handle.read().strip() or '?'}) is using {self.config.state_dir}; "
                f"stop it first, or give this config its own state_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(EXIT_HARD_STOP)
        self._stop.set()

    def _guard(self, what: str, func, *args) -> None:
        """Run a scheduled function; the loop never dies because of one failure."""
        try:
            func(*args)
        except Exception:
            logger.opt(exception=True).error("{} failed; it will run again at its next interval", what)

    def start(self) -> None:
        self._take_lock()
        self.store = Store(self.config.db_path)
        storages, backends = build_storages(self.config), build_backends(self.config)
        self.engine = Engine(self.config, self.store, backends, storages)
        self.engine.prepare()
        scheduler = BackgroundScheduler(
            executors={"default": SchedulerPool(max_workers=4 + len(self.config.inboxes) + len(backends))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        for inbox in self.config.inboxes:
            watcher = InboxWatcher(inbox, self.engine.claim)
            watcher.start()
            self.watchers.append(watcher)
            tick = min(1.0, max(0.2, inbox.settle / 4))
            scheduler.add_job(self._guard, "interval", seconds=tick, args=(f"inbox {inbox.name}", watcher.check),
                              id=f"settle:{inbox.name}")
            scheduler.add_job(self._guard, "interval", seconds=inbox.rescan,
                              args=(f"rescan of {inbox.name}", watcher.rescan), id=f"rescan:{inbox.name}")
        scheduler.add_job(self._guard, "interval", seconds=0.5, args=("pump", self.engine.pump), id="pump")
        for name in backends:
            scheduler.add_job(self._guard, "interval", seconds=min(1.0, self.config.poll.first),
                              args=(f"poll of backend {name}", self.engine.poll_backend, name), id=f"poll:{name}")
        scheduler.start()
        self.scheduler = scheduler
        self.engine.pump()
        logger.info("syncd ready: {} inbox(es), state in {}", len(self.config.inboxes), self.config.state_dir)

    def stop(self) -> None:
        logger.info("stopping: no new jobs are taken; running jobs keep running and are re-attached at next start")
        if self.scheduler is not None:
            # Timers first, so no settle tick can restart a watcher or claim a job during shutdown.
            self.scheduler.shutdown(wait=True)
        for watcher in self.watchers:
            watcher.stop()
        drained = self.engine.stop(DRAIN_SECONDS) if self.engine else True
        if not drained:
            logger.warning("some steps were still running after {}s; they resume at next start", DRAIN_SECONDS)
        if self.store is not None and drained:
            self.store.close()
        logger.info("stopped")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, lambda *_: logger.warning("SIGHUP: reload is not supported yet; restart syncd "
                                                              "to apply a new config"))
        try:
            self.start()
        except AlreadyRunning as exc:
            logger.error("{}", exc)
            return EXIT_LOCKED
        except SpoolError as exc:
            logger.error("{}", exc)
            return EXIT_CONFIG
        while not self._stop.wait(1.0):
            pass
        self.stop()
        return EXIT_OK


def run_daemon(config: Config) -> None:
    """Run until stopped, then exit the process (a stuck worker thread must not keep it alive)."""
    code = Daemon(config).run()
    logger.complete()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
