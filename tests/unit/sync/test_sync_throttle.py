"""The rate-limit parser and the token bucket (with a fake clock)."""

from __future__ import annotations

import pytest

from scoring.sync.throttle import TokenBucket, format_rate, parse_bytes, parse_rate


@pytest.mark.parametrize("text, expected", [
    ("20M", 20 * 2**20), ("20MB", 20 * 2**20), ("20MiB/s", 20 * 2**20), ("512k", 512 * 1024),
    ("1.5G", 1.5 * 2**30), ("1000", 1000.0), (" 3 M ", 3 * 2**20), (2048, 2048.0),
    ("0", None), ("off", None), ("none", None), (0, None), (None, None),
])
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "20X", "-5M", "M", "", "1e6", "20 M B s"])
def test_parse_rate_rejects_with_a_message(text):
    with pytest.raises(ValueError, match="rate limit .*K/M/G"):
        parse_rate(text)


def test_parse_bytes_and_format():
    assert parse_bytes("16G") == 16 * 2**30
    assert format_rate(20 * 2**20) == "20MB/s" and format_rate(None) == "unlimited"
    with pytest.raises(ValueError, match="--max-file-size"):
        parse_bytes("big", "--max-file-size")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


@pytest.mark.parametrize("chunk", [1, 1000, 65536, 1 << 20, 5 << 20])
def test_long_run_rate_is_exact_whatever_the_chunk(chunk):
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, clock=clock, sleep=clock.sleep)
    total = 0
    while total < 10_000_000:
        bucket.consume(chunk)
        total += chunk
    assert clock.now == pytest.approx(total / 1_000_000, rel=1e-9)


def test_burst_after_idle_is_capped():
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, burst=50_000, clock=clock, sleep=clock.sleep)
    clock.now = 100.0  # idle for 100 s: at most 50 kB pass without waiting
    assert bucket.consume(50_000) == 0.0
    assert bucket.consume(100_000) == pytest.approx(0.1)


def test_unlimited_never_waits_and_bad_rate_rejected():
    assert TokenBucket(None).consume(10**12) == 0.0
    with pytest.raises(ValueError):
        TokenBucket(-1)
