"""The `symphony sim` commands end to end, as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = """
seed = 3
slots = 2
[[models]]
name = "r"
profile = "sleep:1082,5204"
slo_ms = 100
arrival = "poisson"
warmup = [{rps = 100, seconds = 0.5}]
bench = [{rps = 300, seconds = 2}]
cooldown = [{rps = 100, seconds = 0.2}]
"""


def symphony(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small(tmp_path: Path) -> str:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return str(path)


def test_same_seed_gives_identical_json(small: str) -> None:
    first = symphony("sim", "run", small, "--seed", "7", "--json")
    second = symphony("sim", "run", small, "--seed", "7", "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["seed"] == 7
    for key in ("success", "dropped", "timeout", "noreply", "offered"):
        assert key in report["total"]
    for key in ("goodput_rps", "bad_rate", "mean_batch_size", "batch_size_histogram",
                "slot_busy_fraction", "busy_slots", "needed_slots", "bound_scale"):
        assert key in report


def test_a_different_seed_gives_a_different_schedule(small: str) -> None:
    a = json.loads(symphony("sim", "run", small, "--seed", "7", "--json").stdout)
    b = json.loads(symphony("sim", "run", small, "--seed", "8", "--json").stdout)
    assert a["total"]["offered"] != b["total"]["offered"]


def test_human_table_names_every_model_and_the_total(small: str) -> None:
    out = symphony("sim", "run", small, "--policy", "eager").stdout
    assert "TOTAL" in out and "\nr " in out and "busy_slots" in out


def test_capacity_and_min_slots_report_their_figures(small: str) -> None:
    cap = symphony("sim", "capacity", small, "--json")
    assert cap.returncode == 0, cap.stderr
    result = json.loads(cap.stdout)
    assert 0.5 < result["fraction_of_bound"] <= 1.05
    assert "[capacity symphony-plus]" in cap.stderr  # progress; symphony-plus is the default
    mins = json.loads(symphony("sim", "min-slots", small, "--scale", "4", "--json").stdout)
    assert mins["min_slots"] >= mins["bound_slots"]


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL.replace("slo_ms = 100", "slo_ms = 0"))
    result = symphony("sim", "run", str(bad))
    assert result.returncode == 2
    assert "slo_ms" in result.stderr
    unknown = symphony("sim", "run", str(bad), "--policy", "fifo")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_fuzz_replays_a_seed() -> None:
    result = symphony("sim", "fuzz", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "seed 3: ok" in result.stderr


def test_core_settings_can_be_overridden_and_are_validated(small: str) -> None:
    eager_like = json.loads(symphony("sim", "run", small, "--json", "--set", "schedulable=immediately",
                                     "--set", "drop=drop_timeout").stdout)
    faithful = json.loads(symphony("sim", "run", small, "--json").stdout)
    assert eager_like["mean_batch_size"] < faithful["mean_batch_size"]
    bad = symphony("sim", "run", small, "--set", "ctrl_ns=-1")
    assert bad.returncode == 2 and "ctrl_ns" in bad.stderr
