"""The daemon fixture judges how the daemon ended: a test cannot pass over a daemon that crashed."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.harness import SyncdProcess, wait_for


def test_stop_passes_a_daemon_that_ended_cleanly_on_sigterm(site):
    daemon = SyncdProcess(site).start()
    assert daemon.stop() == 0


def test_stop_fails_for_a_daemon_that_died_during_the_test(site):
    daemon = SyncdProcess(site).start()
    os.kill(daemon.proc.pid, signal.SIGKILL)  # not through kill9(): the test did not mean it
    wait_for(lambda: daemon.proc.poll() is not None, timeout=10, what="the daemon to die")
    with pytest.raises(AssertionError, match="exited with -9, not 0"):
        daemon.stop()


def test_stop_fails_for_a_traceback_in_the_log(site):
    daemon = SyncdProcess(site).start()
    with open(daemon.log_path, "a") as log:
        log.write("Traceback (most recent call last):\n  File ...\nRuntimeError: boom\n")
    with pytest.raises(AssertionError, match="logged a traceback"):
        daemon.stop()


def test_a_daemon_the_test_killed_itself_is_the_tests_to_judge(site):
    daemon = SyncdProcess(site).start()
    daemon.kill9()
    assert daemon.stop() == -9
    assert daemon.start().stop() == 0, "a restarted daemon is judged again"
