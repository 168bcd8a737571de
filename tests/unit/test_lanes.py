"""Lanes: the first lane takes every step; another only while the lanes before it are stalled on one."""

from __future__ import annotations

import threading

import pytest

from syncd.engine.lanes import Lanes


def _recorder(names: list[str]):
    def step() -> str:
        name = threading.current_thread().name
        names.append(name)
        return name

    return step


def test_short_steps_all_run_on_the_first_lane_in_order():
    lanes = Lanes(2, stall=5.0, name="t-lane")
    names: list[str] = []
    try:
        futures = [lanes.submit(_recorder(names)) for _ in range(50)]
        assert [f.result(timeout=10) for f in futures] == ["t-lane_0"] * 50
    finally:
        lanes.shutdown()
    assert names == ["t-lane_0"] * 50


def test_a_second_lane_takes_steps_while_the_first_is_stalled_on_a_long_one():
    lanes = Lanes(2, stall=0.05, name="t-lane")
    release, started = threading.Event(), threading.Event()

    def long_step() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    names: list[str] = []
    try:
        first = lanes.submit(long_step)
        assert started.wait(10)
        others = [lanes.submit(_recorder(names)) for _ in range(3)]
        # all three run while the long step still holds the first lane
        assert [f.result(timeout=10) for f in others] == ["t-lane_1"] * 3
        assert not first.done()
        release.set()
        assert first.result(timeout=10) == "t-lane_0"
    finally:
        release.set()
        lanes.shutdown()


def test_a_lane_after_the_first_waits_its_turn_while_the_first_is_busy_but_not_stalled():
    lanes = Lanes(2, stall=30.0, name="t-lane")
    release, started = threading.Event(), threading.Event()

    def held() -> None:
        started.set()
        release.wait(10)

    try:
        first = lanes.submit(held)
        assert started.wait(10)
        queued = lanes.submit(lambda: threading.current_thread().name)
        assert not queued.done()  # the second lane may not take it before the first has been busy 30 s
        release.set()
        assert queued.result(timeout=10) == "t-lane_0"
        first.result(timeout=10)
    finally:
        release.set()
        lanes.shutdown()


def test_an_exception_reaches_the_future_and_the_lane_goes_on():
    lanes = Lanes(1, stall=1.0)

    def fails() -> None:
        raise ValueError("bad step")

    try:
        failed = lanes.submit(fails)
        with pytest.raises(ValueError, match="bad step"):
            failed.result(timeout=10)
        assert lanes.submit(lambda: 7).result(timeout=10) == 7
    finally:
        lanes.shutdown()


def test_shutdown_cancels_queued_steps_lets_the_running_one_finish_and_refuses_new_ones():
    lanes = Lanes(1, stall=30.0)
    release, started = threading.Event(), threading.Event()
    ran: list[int] = []

    def held() -> str:
        started.set()
        release.wait(10)
        return "finished"

    running = lanes.submit(held)
    assert started.wait(10)
    queued = [lanes.submit(lambda n=n: ran.append(n)) for n in range(3)]
    cancelled: list[bool] = []
    queued[0].add_done_callback(lambda f: cancelled.append(f.cancelled()))
    lanes.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued) and cancelled == [True]
    with pytest.raises(RuntimeError):
        lanes.submit(lambda: None)
    release.set()
    assert running.result(timeout=10) == "finished"
    lanes.shutdown(wait=True)
    assert ran == []


def test_at_least_one_lane():
    with pytest.raises(ValueError):
        Lanes(0, stall=1.0)
