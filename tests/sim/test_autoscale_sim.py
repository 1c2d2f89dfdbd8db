"""The autoscaler in the simulator's loop (issue 13): slots follow a changing load, a drained slot
finishes its plans and takes no new ones, every request leaves exactly once (the checkers), same
seed same result; and many seeds with noise, random autoscaler settings and slot failures."""

import random
from pathlib import Path

import msgspec
import pytest

from coordinator.autoscale import AutoscaleConfig
from load.sim.autoscale import simulate_autoscale
from load.sim.records import SimEvent, SimOptions
from load.workload import load_workload

# A short day on 8 slots: night 1.2 slots of work, noon 6.4 (0.15 -> 0.8 of the pool). The model
# is ten times slower than the example's, with a 1 s SLO: the same shape at a tenth of the
# requests, so a run takes a second or two.
DAY = """
seed = 4
slots = 8
[[models]]
name = "r"
profile = "sleep:10820,52040"
slo_ms = 1000
arrival = "poisson"
warmup = [{rps = 100, seconds = 2}]
diurnal = {peak_rps = 550, trough = 0.1875, period_s = 120, power = 2, step_s = 4}
"""


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("day") / "day.toml"
    path.write_text(DAY)
    return load_workload(str(path))


def test_slots_follow_the_day_and_nothing_is_lost(day) -> None:
    config = AutoscaleConfig(cold_start_s=4, down_window_s=8, down_cooldown_s=4)
    result = simulate_autoscale(day, "symphony-plus", config, epoch_s=1.0, options=SimOptions(checks=True))
    held = [s.active + s.starting + s.draining for s in result.samples]
    assert min(held[:10]) <= 3 and max(held) == 8 and held[-1] <= 4  # night, noon, night
    assert result.scale_ups > 0 and result.scale_downs > 0
    assert result.bad_rate < 0.01
    assert result.gpu_seconds < 0.8 * 8 * result.bench_s  # well below the whole pool
    assert result.gpu_vs_oracle < 1.6
    fixed = simulate_autoscale(day, "symphony-plus", config, epoch_s=1.0, fixed_slots=8)
    assert fixed.gpu_seconds == pytest.approx(8 * fixed.bench_s, rel=1e-6)


def test_same_seed_same_result(day) -> None:
    config = AutoscaleConfig(cold_start_s=4, down_window_s=8, down_cooldown_s=4)
    runs = [simulate_autoscale(day, "symphony", config, epoch_s=1.0, options=SimOptions(noise=0.05))
            for _ in range(2)]
    assert msgspec.json.encode(runs[0]) == msgspec.json.encode(runs[1])


def test_hpa_rule_reads_eager_busy_slots_as_need(day) -> None:
    """Eager runs small batches, so its slots look busy: the HPA rule holds more of them."""
    ours = simulate_autoscale(day, "symphony-plus", AutoscaleConfig(cold_start_s=4), epoch_s=1.0)
    eager = simulate_autoscale(day, "eager", AutoscaleConfig(rule="hpa", cold_start_s=4), epoch_s=1.0)
    assert eager.gpu_seconds > ours.gpu_seconds


@pytest.mark.parametrize("seed", range(12))
def test_swarm_of_settings_noise_and_slot_failures(day, seed: int) -> None:
    """Random autoscaler settings, execution noise and slot failures under the checkers: every
    request leaves exactly once, nothing is dispatched to a slot that is not serving, and the
    GPU time is never more than the pool."""
    rng = random.Random(seed)
    config = AutoscaleConfig(
        rule=rng.choice(["demand", "hpa"]), target_utilization=rng.uniform(0.4, 0.95),
        min_slots=rng.randint(0, 2), hysteresis=rng.uniform(0, 0.3), down_cooldown_s=rng.uniform(0, 6),
        down_window_s=rng.uniform(0, 10), pressure_step=rng.uniform(0.1, 1), cold_start_s=rng.uniform(0, 6))
    failures = [SimEvent(at_s=rng.uniform(2, 120), kind="remove", slot_id=rng.randrange(8)) for _ in range(4)]
    options = SimOptions(checks=True, noise=rng.choice([0.0, 0.05, 0.2]), seed=seed, slot_events=failures)
    policy = rng.choice(["symphony-plus", "symphony", "eager", "triton"])
    result = simulate_autoscale(day, policy, config, epoch_s=rng.choice([0.5, 1.0, 2.0]), options=options)
    assert result.gpu_seconds <= 8 * result.bench_s + 1e-6
    assert all(0 <= s.active <= 8 and s.active + s.starting + s.draining <= 8 for s in result.samples)


def test_cli_autoscale_json_and_plot(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "day.toml"
    path.write_text(DAY)
    plot = tmp_path / "day.png"
    command = [sys.executable, "-m", "ops.cli", "sim", "autoscale", str(path), "--cold-start-s", "4",
               "--epoch-s", "1", "--json", "--plot", str(plot)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = msgspec.json.decode(done.stdout)
    for key in ("gpu_seconds", "oracle_gpu_seconds", "bad_rate", "goodput_rps", "samples"):
        assert key in result
    assert plot.stat().st_size > 10_000
