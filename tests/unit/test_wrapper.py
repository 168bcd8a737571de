"""The wrapper's exit file is in the job's own folder: whatever the job writes there, reading it never fails."""

from __future__ import annotations

import pytest

from syncd.backends import wrapper


@pytest.mark.parametrize("text, code", [("0\n", 0), ("3\n", 3), ("255", 255), (" 7 \n", 7)])
def test_an_exit_code_written_by_the_wrapper_is_read(text, code):
    assert wrapper.parse_exit_code(text) == code


@pytest.mark.parametrize("text", ["", "256", "-1", "²", "٣", "9" * 5000, "1e3", "0x10", "3\n4", "ok"])
def test_anything_else_a_job_left_there_is_no_exit_code_and_no_crash(text):
    assert wrapper.parse_exit_code(text) is None
