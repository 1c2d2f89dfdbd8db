"""Reference §1.4: fixed bins sealed on a grid from construction, a window of samples."""

import pytest

from shard.core.rate_meter import RateMeter

BIN = 50_000_000


def test_no_estimate_until_the_first_bin_with_traffic_is_sealed() -> None:
    meter = RateMeter(BIN, 100, now_ns=0)
    meter.advance(10 * BIN)
    assert not meter.has_sample
    meter.hit(10 * BIN + 1)
    assert not meter.has_sample
    meter.advance(11 * BIN)
    assert meter.has_sample
    assert meter.mean_rps == pytest.approx(20.0)  # one request in 50 ms


def test_mean_and_population_std_over_the_window() -> None:
    meter = RateMeter(BIN, 4, now_ns=0)
    for bin_index, hits in enumerate([1, 3, 5, 7, 9]):
        for _ in range(hits):
            meter.hit(bin_index * BIN + 1)
    meter.advance(5 * BIN)
    # window keeps the last 4 samples: 3, 5, 7, 9 per 50 ms = 60, 100, 140, 180 rps
    assert meter.mean_rps == pytest.approx(120.0)
    assert meter.std_rps == pytest.approx((((60 - 120) ** 2 + 20**2 * 2 + 60**2) / 4) ** 0.5)


def test_idle_bins_count_as_zero_once_traffic_started() -> None:
    meter = RateMeter(BIN, 10, now_ns=0)
    meter.hit(1)
    meter.advance(BIN)
    assert meter.mean_rps == pytest.approx(20.0)
    meter.advance(5 * BIN)
    assert meter.mean_rps == pytest.approx(20.0 / 5)
    meter.advance(1000 * BIN)
    assert meter.mean_rps == 0.0


def test_lazy_sealing_equals_sealing_every_bin() -> None:
    lazy = RateMeter(BIN, 20, now_ns=0)
    eager = RateMeter(BIN, 20, now_ns=0)
    hits = [3, 9, 17, 250, 251, 252, 900, 1403, 1404, 3000]  # ms
    for at_ms in hits:
        now = at_ms * 1_000_000
        while eager.next_seal_ns <= now:
            eager.advance(eager.next_seal_ns)
        eager.hit(now)
        lazy.hit(now)
    lazy.advance(4000 * 1_000_000)
    while eager.next_seal_ns <= 4000 * 1_000_000:
        eager.advance(eager.next_seal_ns)
    assert list(lazy.samples) == list(eager.samples)
    assert lazy.mean_rps == eager.mean_rps
