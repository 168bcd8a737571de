"""A reload that replaces a backend or storage closes the old one, but only once the work that was under way
when it was replaced (a job's step, a poll, a mirror pass) is done with it: an old local backend otherwise
keeps its runner launcher and exit watcher for the daemon's whole life, one more per reload."""

from __future__ import annotations

import threading

from syncd.backends.memory import MemoryBackend, MemoryService
from syncd.engine.core import Engine
from syncd.service.daemon import build_storages
from tests.support.harness import wait_for
from tests.unit.test_engine_contract import World


class Recorded(MemoryBackend):
    """A memory backend whose submissions can be held at a gate, and whose closing is recorded."""

    def __init__(self, world: World, closed: list, gate: threading.Event | None = None):
        super().__init__("mem", world.config.backend_options["mem"], world.config.state_dir / "mem", world.service)
        self.closed, self.gate, self.entered = closed, gate, threading.Event()

    def submit(self, spec):
        self._at_gate()
        return super().submit(spec)

    def poll(self, refs):
        if refs:
            self._at_gate()
        return super().poll(refs)

    def _at_gate(self) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "the test never opened the gate"

    def close(self) -> None:
        self.closed.append(self)
        super().close()


def an_engine_on(world: World, backend: Recorded) -> Engine:
    """An engine of this test's own on ``backend``, in place of the one World started."""
    engine = Engine(world.config, world.store, {"mem": backend}, build_storages(world.config))
    engine.prepare()
    world.engine.stop(5)
    world.engine = engine
    return engine


def test_a_replaced_backend_is_closed_after_the_step_poll_or_mirror_pass_that_may_hold_it(tmp_path):
    world = World(tmp_path, MemoryService())
    closed: list[Recorded] = []
    gate = threading.Event()
    first = Recorded(world, closed, gate)
    engine = an_engine_on(world, first)
    job = world.drop("held", {"command": "echo hi > out.txt"})
    engine.pump()
    assert first.entered.wait(10), "the submission step never started"

    second = Recorded(world, closed)
    engine.reconfigure(world.config, {"mem": second}, {})
    assert closed == [], "the step under way still uses the old backend"
    gate.set()
    world.pump_until(lambda: world.job(job).state == "succeeded", engine=engine)
    wait_for(lambda: closed == [first], what="the old backend closed once its step ended")
    assert world.service.runs == 1, "the job ran once, submitted by the old backend's step"
    wait_for(lambda: engine.busy == 0, what="the job's last step (finishing) to end")  # nothing pumps after this

    third = Recorded(world, closed)
    with engine.holding("mirror:standing"):
        engine.reconfigure(world.config, {"mem": third}, {})
        assert closed == [first], "a mirror pass under way holds what it started with"
    assert closed == [first, second]

    fourth = Recorded(world, closed)
    engine.reconfigure(world.config, {"mem": fourth}, {})
    assert closed == [first, second, third], "nothing under way: closed at once"
    engine.close_retired()
    assert fourth not in closed, "the backend in use is never closed by a reload"
    engine.stop(5)


def test_a_poll_under_way_holds_the_backend_a_reload_replaced(tmp_path):
    world = World(tmp_path, MemoryService())
    closed: list[Recorded] = []
    gate = threading.Event()
    first = Recorded(world, closed)
    engine = an_engine_on(world, first)
    job = world.drop("polled", {"command": "echo hi > out.txt"})
    world.pump_until(lambda: world.job(job).state in ("queued", "running", "submitted"), engine=engine)
    wait_for(lambda: engine.busy == 0, what="the submission step to end")
    first.gate, first.entered = gate, threading.Event()
    engine.store.update(job, next_at=0)  # due now
    poll = threading.Thread(target=engine.poll_backend, args=("mem",))
    poll.start()
    assert first.entered.wait(10), "the poll never reached the backend"

    engine.reconfigure(world.config, {"mem": Recorded(world, closed)}, {})
    assert closed == [], "the poll under way still uses the old backend"
    gate.set()
    poll.join(10)
    assert closed == [first], "closed once the poll that held it ended"
    engine.stop(5)


def test_at_shutdown_what_a_reload_replaced_is_closed_even_while_held(tmp_path):
    world = World(tmp_path, MemoryService())
    closed: list[Recorded] = []
    first = Recorded(world, closed)
    engine = an_engine_on(world, first)
    with engine.holding("mirror:standing"):  # a pass that never ends before the daemon stops
        engine.reconfigure(world.config, {"mem": Recorded(world, closed)}, {})
        assert closed == []
        engine.close_retired()
        assert closed == [first]
    assert closed == [first], "closed once, not again when the pass ends"
    engine.stop(5)
