"""syncd.units: human-written durations and sizes."""

from __future__ import annotations

import pytest

from syncd.units import parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 90.0),
        ("2.5", 2.5),
        ("2s", 2.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        (" 2s ", 2.0),
        ("5 s", 5.0),
        ("2S", 2.0),
        ("1:30", 5400.0),  # H:MM
        ("1:30:15", 5415.0),  # H:MM:SS
    ],
)
def test_parse_duration_accepts_text_forms(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("number", [0, 7, 2.5])
def test_parse_duration_accepts_numbers_as_seconds(number):
    assert parse_duration(number) == float(number)
    assert isinstance(parse_duration(number), float)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1m30", "-1s", "s", "1h-30m", "5 minutes"])
def test_parse_duration_rejects_bad_text_with_example(text):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "is not a duration" in message
    assert "30s, 5m, 2h or 1h30m" in message


def test_parse_duration_rejects_negative_number():
    with pytest.raises(ValueError, match=r"duration -1 is negative"):
        parse_duration(-1)


@pytest.mark.parametrize("value", [True, False, None, [1], {"s": 1}])
def test_parse_duration_rejects_non_text_values(value):
    with pytest.raises(ValueError, match="is not a duration; write e.g. 30s, 5m or 2h"):
        parse_duration(value)


@pytest.mark.parametrize(
    "text, size",
    [
        ("512", 512),
        ("512B", 512),
        ("1k", 1000),
        ("1KB", 1000),
        ("5MB", 5_000_000),
        ("5 mb", 5_000_000),
        ("2G", 2_000_000_000),
        ("1T", 1000**4),
        ("1P", 1000**5),
        ("1Ki", 1024),
        ("1KiB", 1024),
        ("1.5KiB", 1536),
        ("5MiB", 5 * 1024**2),
        ("4gib", 4 * 1024**3),
        ("1TiB", 1024**4),
        (" 3 MiB ", 3 * 1024**2),
    ],
)
def test_parse_size_accepts_text_forms(text, size):
    assert parse_size(text) == size


def test_parse_size_accepts_numbers():
    assert parse_size(0) == 0
    assert parse_size(4096) == 4096
    assert parse_size(1.9) == 1  # whole bytes


@pytest.mark.parametrize("text", ["", "x", "5i", "5XB", "-1", "5 MiBs", "MiB", "1.2.3K"])
def test_parse_size_rejects_bad_text_with_example(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    assert "is not a size; write e.g. 512MiB, 4G or 1000000" in message


def test_parse_size_rejects_negative_number():
    with pytest.raises(ValueError, match=r"size -5 is negative"):
        parse_size(-5)


@pytest.mark.parametrize("value", [True, None, [1]])
def test_parse_size_rejects_non_text_values(value):
    with pytest.raises(ValueError, match="is not a size; write e.g. 512MiB or 4G"):
        parse_size(value)
