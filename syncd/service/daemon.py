"""The syncd process: composition root, scheduler, signals, orderly shutdown.

Signal handlers only set flags; the main thread acts. The first SIGTERM/SIGINT
drains (stop intake, let running steps finish for a few seconds, leave running
jobs running: they are re-attached at the next start); a second one exits at once.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler

from syncd import plugins
from syncd.backends.base import Backend
from syncd.config import Config, InboxConfig, MirrorConfig, load_config
from syncd.delivery.outbox import run_standing_mirror
from syncd.engine.core import Engine
from syncd.engine.crashpoints import CrashPoints
from syncd.errors import ConfigError
from syncd.intake.spool import Spool, SpoolError
from syncd.intake.watch import InboxWatcher, slow_create_warnings
from syncd.log import logger
from syncd.service.notify import Notifier
from syncd.service.observe import HttpEndpoint, Metrics
from syncd.service.web.app import InboxView, PageSources, StatusPage
from syncd.service.web.auth import AuthFileError, Credentials
from syncd.service.webhook import WebhookSender
from syncd.state.share import Fenced
from syncd.state.store import ACTIVE, Store, StoreUnwritable, make_private_dir
from syncd.state.summary import job_summary, local_iso
from syncd.storage.base import Storage

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_HARD_STOP = 130
DRAIN_SECONDS = 5.0
PUMP_TICK = 0.5  # the pump runs at least this often, work or not (retries and polls fall due on their own)
PUMP_GAP = 0.025  # and at most this often: wakes in between are taken together (under load, most of what a
# pump reads is in a worker's hands already: pumping more often only reads it again)
CHECK_GAP = 0.02  # an inbox is checked at most this often, however many events arrive
STALL_SECONDS = 30.0  # no pump for this long: not alive (no watchdog ping, /healthz 503)
JOBS_SHOWN = 500  # /jobs: the jobs created last
PROBE_KEY = ".syncd-readiness-probe"  # /readyz asks a storage for this key; it need not exist
_UNSET = re.compile(r"environment variable (\w+) is not set; export it or write \$\{\1:-default\}$")


def load(config_path: Path | str, env: dict[str, str] | None = None) -> Config:
    return load_config(config_path, plugins.options_model, env=env)


def build_storages(config: Config, only: Collection[str] | None = None) -> dict[str, Storage]:
    return {
        name: plugins.load("storage", opts.type)(name, opts)
        for name, opts in config.storage_options.items()
        if only is None or name in only
    }


def build_backends(config: Config, only: Collection[str] | None = None) -> dict[str, Backend]:
    return {
        name: plugins.load("backend", opts.type)(name, opts, config.state_dir / "backends" / name)
        for name, opts in config.backend_options.items()
        if only is None or name in only
    }


class AlreadyRunning(Exception):
    pass


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._signals = 0
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.http: HttpEndpoint | None = None
        self.webhook: WebhookSender | None = None
        self._last_tick = time.monotonic()
        self._probe_problems: dict[str, str] = {}
        self._announced: set[str] = set()  # standing mirrors whose outcome has been logged since (re)start
        self._probe_storages: dict[str, Storage] = {}
        self._lock_file: Any = None
        # Made by start(), after the state_dir lock is held; the properties below refuse use before that.
        self._store: Store | None = None
        self._engine: Engine | None = None
        self._scheduler: BackgroundScheduler | None = None
        self.watchers: list[InboxWatcher] = []
        self._work = threading.Event()  # set by the engine and the watchers: there is something to do now
        self._halt = threading.Event()  # ends the pump's and the inboxes' loops
        self._loops: list[threading.Thread] = []

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the daemon has no state store before start()")
        return self._store

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the daemon has no engine before start()")
        return self._engine

    @property
    def scheduler(self) -> BackgroundScheduler:
        if self._scheduler is None:
            raise RuntimeError("the daemon has no scheduler before start()")
        return self._scheduler

    def _take_lock(self) -> None:
        make_private_dir(self.config.state_dir)
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

    def _warn_if_jobs_can_read_the_config(self) -> None:
        source, users = self.config.source, self.config.run_as_users
        if users and source is not None and source.stat().st_mode & 0o044:
            logger.warning(
                "the config {} is readable by other users (mode {:04o}), so jobs running as {} can read "
                "it; chmod 600 {}",
                source,
                stat.S_IMODE(source.stat().st_mode),
                ", ".join(sorted(users)),
                source,
            )

    def _warn_of_slow_filesystems(self) -> None:
        folders = {"the state folder": self.config.state_dir}
        for inbox in self.config.inboxes:
            folders[f"inbox {inbox.name}"] = inbox.path
            folders[f"the outbox of inbox {inbox.name}"] = inbox.outbox
        for warning in slow_create_warnings(folders):
            logger.warning("{}", warning)

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self._reload.set()

    def _tick(self) -> None:
        """The pump, plus the proof of progress that the watchdog ping and /healthz rely on."""
        self.engine.pump()
        self._last_tick = time.monotonic()

    @property
    def stall_seconds(self) -> float:
        """No pump for this long means wedged: half the systemd watchdog interval, at most STALL_SECONDS."""
        interval = self.notifier.watchdog_interval
        return min(STALL_SECONDS, interval / 2) if interval else STALL_SECONDS

    def alive(self) -> bool:
        return time.monotonic() - self._last_tick < self.stall_seconds

    def probe_backends(self) -> None:
        """Ask every backend, and every remote storage an inbox or a mirror uses, whether it answers."""
        problems = {}
        for name, backend in self.engine.backends.items():
            try:
                backend.probe()
            except Exception as exc:  # any failure means "not ready", never a crash
                problems[f"backend {name}"] = str(exc)
        used = {(i.storage, i.bucket) for i in self.config.inboxes} | {
            (m.storage, m.bucket) for m in self.config.mirrors
        }
        for name, bucket in sorted(used):
            storage = self._probe_storages.get(name)
            if storage is None or f"storage {name}" in problems:
                continue
            try:  # a HEAD of a key nobody writes: any answer, even "no such key", is an answer
                storage.head(bucket, PROBE_KEY)
            except Exception as exc:
                problems[f"storage {name}"] = str(exc)
        if problems != self._probe_problems:
            for what, why in problems.items():
                logger.warning("{} did not answer: {}; its jobs wait until it does", what, why)
        self._probe_problems = problems

    def _renew_probe_storages(self) -> None:
        """Storages of its own for the readiness probe: its connections are never the jobs' (a probe's
        kept-alive connection must neither stand in for the jobs' calls nor be spoilt by them)."""
        for storage in self._probe_storages.values():
            storage.close()
        built = build_storages(self.config)
        self._probe_storages = {name: st for name, st in built.items() if st.remote_service}
        for storage in built.values():
            if not storage.remote_service:
                storage.close()

    def ready_problems(self) -> dict[str, str]:
        problems = dict(self._probe_problems)
        if self.store.write_problem is not None:
            problems["state store"] = self.store.write_problem
        for backend, (_until, reason) in self.store.backend_pauses().items():
            problems[f"backend {backend}"] = reason
        for service, (_since, next_probe, reason) in self.store.open_circuits().items():
            problems[service] = f"not answering ({reason}); next probe at {local_iso(next_probe)}"
        if not self.alive():
            problems["main loop"] = f"no progress for more than {self.stall_seconds:.0f}s"
        return problems

    def status_line(self) -> str:
        counts = self.store.count_by_state()
        active = sum(n for state, n in counts.items() if state in ACTIVE)
        waiting = counts.get("staged", 0)
        held = counts.get("held", 0)
        return f"watching {len(self.watchers)} inbox(es); {active} job(s) in flight, {waiting} waiting for a slot" + (
            f", {held} held for attention" if held else ""
        )

    def _report_status(self) -> None:
        self.notifier.status(self.status_line())

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(EXIT_HARD_STOP)
        self._stop.set()

    def _guard(self, what: str, func, *args) -> None:
        """Run a scheduled function; the loop never dies because of one failure."""
        try:
            func(*args)
        except StoreUnwritable:
            pass  # the store logged it once; /readyz reports it until the store can write again
        except Fenced as exc:  # the lease renewal hands the jobs over and says so
            logger.info("{} stopped: {}", what, exc)
        except Exception:
            logger.opt(exception=True).error("{} failed; it will run again at its next interval", what)

    def start(self) -> None:
        # Nothing syncd creates is ever world-writable, whatever umask it was started with.
        os.umask(os.umask(0) | 0o002)
        self._take_lock()
        self._warn_if_jobs_can_read_the_config()
        self._warn_of_slow_filesystems()
        store = self._store = Store(self.config.db_path)
        storages, backends = build_storages(self.config), build_backends(self.config)
        engine = self._engine = Engine(
            self.config, store, backends, storages, metrics=self.metrics, crash_points=CrashPoints.from_env()
        )
        store.on_transition = engine.on_transition
        engine.wake = self._work.set
        engine.prepare()
        self.metrics.watch_store(store, lambda: {w.inbox.name: w.restarts for w in self.watchers})
        self._renew_probe_storages()
        self.probe_backends()
        if self.config.webhook is not None:
            self.webhook = WebhookSender(
                self.config.webhook.url, store, self.config.retry, self.config.webhook.timeout, engine.stored_result
            )
        scheduler = BackgroundScheduler(
            executors={
                "default": SchedulerPool(
                    max_workers=4 + len(self.config.inboxes) + len(backends) + len(self.config.mirrors)
                )
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler = scheduler
        for inbox in self.config.inboxes:
            self._watch(inbox)
        self._start_loop(self._pump_loop, "syncd-pump")
        if self.config.takeover.enabled:
            self._start_loop(self._lease_loop, "syncd-lease")
        for name in backends:
            self._schedule_poll(name)
        scheduler.add_job(self._guard, "interval", seconds=30, args=("backend probes", self.probe_backends), id="probe")
        scheduler.add_job(self._guard, "interval", seconds=5, args=("status", self._report_status), id="status")
        if self.webhook is not None:
            scheduler.add_job(self._guard, "interval", seconds=1, args=("webhook", self.webhook.send_due), id="webhook")
        for mirror in self.config.mirrors:
            self._schedule_mirror(mirror)
        scheduler.start()
        self._tick()
        if self.config.http.listen:
            self._serve_http()
        logger.info("syncd ready: {} inbox(es), state in {}", len(self.config.inboxes), self.config.state_dir)
        self.notifier.ready(self.status_line())

    def _start_loop(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._loops = [t for t in self._loops if t.is_alive()] + [thread]

    def _pump_loop(self) -> None:
        """The pump runs when there is work (and at least every PUMP_TICK): a claim, a transition, a free
        worker, a backend's status hint. Wakes that come while it runs are taken together."""
        while not self._halt.is_set():
            self._work.wait(PUMP_TICK)
            self._work.clear()
            # The polls first: a job whose end was just heard is handed out by the pump that follows.
            for name in self.engine.hinted_backends():
                self._guard(f"poll of backend {name}", self.engine.poll_backend, name)
            self._guard("pump", self._tick)
            self._halt.wait(PUMP_GAP)

    def _lease_loop(self) -> None:
        """Renew this daemon's leases on the shared inboxes and take over lapsed ones; a thread of its own,
        so that no slow step or poll delays a renewal."""
        while not self._halt.wait(self.config.takeover.renew):
            self._guard("lease renewal", self.engine.tend_share)
            self._work.set()  # a renewal may allow work again (a lease confirmed, jobs taken over)

    def _check_loop(self, watcher: InboxWatcher, tick: float) -> None:
        """An inbox's settle checks: at once on an event (a folder moved in with its .ready marker is
        claimed without waiting for a tick), and every ``tick`` seconds."""
        while not self._halt.is_set() and watcher.wait_for_change(tick):
            self._guard(f"inbox {watcher.inbox.name}", watcher.check)
            self._halt.wait(CHECK_GAP)

    def _schedule_mirror(self, mirror: MirrorConfig) -> None:
        """A standing mirror's timer; its pass runs at once (at start, and after a reload), and
        coalesce + max_instances=1 keep a slow pass from piling up."""
        storage = self.engine.storages[mirror.storage]
        self._announced.discard(mirror.name)  # a first pass (or the first after a reload) logs its outcome
        self.scheduler.add_job(
            self._guard,
            "interval",
            seconds=mirror.every,
            next_run_time=datetime.now(),
            args=(f"mirror {mirror.name}", self._mirror_pass, mirror, getattr(storage, "unwrapped", storage)),
            id=f"mirror:{mirror.name}",
            replace_existing=True,
        )

    def _mirror_pass(self, mirror: MirrorConfig, storage: Storage) -> None:
        announce = mirror.name not in self._announced
        self._announced.add(mirror.name)
        with self.engine.holding(f"mirror:{mirror.name}"):  # a reload that replaces the storage waits for it
            run_standing_mirror(mirror, storage, self.store, self.config.retry, announce=announce)

    def _serve_http(self) -> None:
        http = self.config.http
        assert http.listen is not None
        host, port = http.listen.rsplit(":", 1)
        try:
            credentials = Credentials.load(http.auth_file) if http.auth_file is not None else None
        except AuthFileError as exc:
            # Fail closed: without its credentials the endpoint would show jobs to anyone who can reach it.
            logger.error("{}; running without the http endpoint until the file is fixed and syncd restarted", exc)
            return
        page = StatusPage(
            PageSources(
                self.store,
                lambda: self.config,
                inboxes=self.inbox_views,
                probe_problems=lambda: dict(self._probe_problems),
                alive=self.alive,
                transfers=lambda: dict(self.engine.transfers),
            ),
            credentials,
            actions=http.actions,
        )
        try:
            self.http = HttpEndpoint(
                host,
                int(port),
                metrics=self.metrics,
                alive=self.alive,
                ready=self.ready_problems,
                jobs=self.jobs_json,
                page=page,
            )
            self.http.start()
            logger.info(
                "http endpoint on http://{}:{}/ (status page, healthz, readyz, metrics, jobs{})",
                *self.http.address,
                "; actions on" if page.actions else "",
            )
        except OSError as exc:
            logger.error(
                "cannot listen on {} ({}); running without the http endpoint; set http.listen to a free port",
                http.listen,
                exc.strerror,
            )

    def inbox_views(self) -> list[InboxView]:
        return [InboxView(w.inbox.name, w.mode, w.paused, w.pending) for w in list(self.watchers)]

    def _watch(self, inbox: InboxConfig) -> None:
        watcher = InboxWatcher(inbox, self.engine.claim)
        watcher.start()
        self.watchers.append(watcher)
        tick = min(1.0, max(0.2, inbox.settle / 4))
        self._start_loop(self._check_loop, f"syncd-inbox-{inbox.name}", watcher, tick)
        self.scheduler.add_job(
            self._guard,
            "interval",
            seconds=inbox.rescan,
            args=(f"rescan of {inbox.name}", watcher.rescan),
            id=f"rescan:{inbox.name}",
            replace_existing=True,
        )

    def _unwatch(self, name: str) -> None:
        for watcher in [w for w in self.watchers if w.inbox.name == name]:
            watcher.close()
            self.watchers.remove(watcher)
        if self.scheduler.get_job(f"rescan:{name}"):
            self.scheduler.remove_job(f"rescan:{name}")

    def _schedule_poll(self, name: str) -> None:
        self.scheduler.add_job(
            self._guard,
            "interval",
            seconds=min(1.0, self.config.poll.first),
            args=(f"poll of backend {name}", self.engine.poll_backend, name),
            id=f"poll:{name}",
            replace_existing=True,
        )

    def jobs_json(self) -> list[dict]:
        return [job_summary(job) for job in self.store.latest(JOBS_SHOWN)]

    def reload(self) -> None:
        """Re-read the config. An invalid one is refused (old one kept); jobs in flight are not disturbed."""
        self.notifier.reloading()
        try:
            if self.config.source is None:  # a Config built in code, not read from a file: nothing to re-read
                raise ConfigError("<config>", ["this config was not read from a file, so it cannot be re-read"])
            new = load(self.config.source)
            if new.takeover != self.config.takeover:
                raise ConfigError(
                    str(self.config.source),
                    ["takeover: its settings change only at a restart (the daemon's leases are held under them)"],
                )
            for inbox in new.inboxes:
                Spool(inbox).prepare()
        except (ConfigError, SpoolError, OSError) as exc:
            problems = [_for_a_running_daemon(p) for p in exc.problems] if isinstance(exc, ConfigError) else [str(exc)]
            logger.error("reload refused, keeping the running config; fix these and send SIGHUP again:")
            for problem in problems:
                logger.error("  {}", problem)
            self.notifier.ready(self.status_line())
            return
        old_inboxes = {inbox.name: inbox for inbox in self.config.inboxes}
        old_mirrors = self.config.mirrors
        new_inboxes = {inbox.name: inbox for inbox in new.inboxes}
        changed_backends = {n for n, o in new.backend_options.items() if self.config.backend_options.get(n) != o}
        changed_storages = {n for n, o in new.storage_options.items() if self.config.storage_options.get(n) != o}
        backends = build_backends(new, changed_backends)
        storages = build_storages(new, changed_storages)
        self.engine.reconfigure(new, backends, storages)
        for name in old_inboxes.keys() - new_inboxes.keys():
            self._unwatch(name)
            logger.info("inbox {}: stopped watching {} (no longer in the config)", name, old_inboxes[name].path)
        for name, inbox in new_inboxes.items():
            if old_inboxes.get(name) != inbox:
                self._unwatch(name)
                self._watch(inbox)
        for name in backends:
            self._schedule_poll(name)
        self.config = new
        self._renew_probe_storages()
        for name in {m.name for m in old_mirrors} - {m.name for m in new.mirrors}:
            if self.scheduler.get_job(f"mirror:{name}"):
                self.scheduler.remove_job(f"mirror:{name}")
            logger.info("mirror {}: stopped (no longer in the config)", name)
        for mirror in new.mirrors:
            self._schedule_mirror(mirror)  # a pass now, with the new config
        logger.info(
            "config reloaded: {} inbox(es), {} backend(s) changed, {} storage(s) changed",
            len(new_inboxes),
            len(backends),
            len(storages),
        )
        self.notifier.ready(self.status_line())

    def stop(self) -> None:
        self.notifier.stopping()
        logger.info("stopping: no new jobs are taken; running jobs keep running and are re-attached at next start")
        if self.http is not None:
            self.http.stop()
        # Timers and loops first, so no settle check can restart a watcher or claim a job during shutdown.
        self._halt.set()
        for watcher in self.watchers:
            watcher.close()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        for thread in self._loops:
            thread.join(timeout=DRAIN_SECONDS)
        for storage in self._probe_storages.values():
            storage.close()
        drained = self._engine.stop(DRAIN_SECONDS) if self._engine is not None else True
        if not drained:
            logger.warning("some steps were still running after {}s; they resume at next start", DRAIN_SECONDS)
        if self._engine is not None and drained:
            self._engine.close_retired()
        if self._store is not None and drained:
            self._store.close()
        logger.info("stopped")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            self.start()
        except AlreadyRunning as exc:
            logger.error("{}", exc)
            return EXIT_LOCKED
        except SpoolError as exc:
            logger.error("{}", exc)
            return EXIT_CONFIG
        ping_every = min(1.0, self.notifier.watchdog_interval / 3) if self.notifier.watchdog_interval else 1.0
        while not self._stop.wait(ping_every):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self.alive():
                self.notifier.watchdog()  # only while the loop makes progress: a wedged one gets restarted
        self.stop()
        return EXIT_OK


def _for_a_running_daemon(problem: str) -> str:
    """A config problem as advice a running daemon can take: its environment was fixed when it started."""
    match = _UNSET.search(problem)
    if match is None:
        return problem
    name = match.group(1)
    return problem[: match.start()] + (
        f"environment variable {name} is not set in the running daemon's environment, and a reload cannot "
        f"change it; write ${{{name}:-default}} in the config, or set {name} where the daemon is started "
        f"(the unit's Environment= or EnvironmentFile=) and restart it"
    )


def run_daemon(config: Config) -> None:
    """Run until stopped, then exit the process (a stuck worker thread must not keep it alive)."""
    code = Daemon(config).run()
    logger.complete()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
