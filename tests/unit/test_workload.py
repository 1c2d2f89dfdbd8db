"""Workload files: the documented TOML form parses; mistakes get clear errors."""

from pathlib import Path

import pytest

from load.bound import analytic_bound
from load.workload import BUILTIN_DIR, load_workload

ISSUE_EXAMPLE = """
seed = 42
slots = 8                         # fake GPU slots
[[models]]
name = "resnet_a"
profile = "sleep:1082,5204"       # µs per item, µs intercept
slo_ms = 100
arrival = "gamma:0.5"
warmup = [{rps = 200, seconds = 2}]
bench = [{rps = 400, seconds = 10}]
cooldown = [{rps = 200, seconds = 1}]
"""


def test_the_documented_form_parses(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(ISSUE_EXAMPLE)
    loaded = load_workload(str(path))
    model = loaded.workload.models[0]
    assert (loaded.workload.slots, model.slo_ms, model.bench_mean_rps) == (8, 100, 400)
    assert loaded.profiles["resnet_a"].forward_us(1) == 6286


@pytest.mark.parametrize("name", sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
def test_builtin_workloads_load_and_have_a_finite_bound(name: str) -> None:
    loaded = load_workload(name)
    bound = analytic_bound(loaded, loaded.workload.slots)
    assert 0 < bound.bound_scale < 100


def test_many_model_workload_is_as_described() -> None:
    models = load_workload("many-model").workload.models
    assert len(models) >= 20
    assert min(m.slo_ms for m in models) == 25 and max(m.slo_ms for m in models) == 500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ISSUE_EXAMPLE.replace('slo_ms = 100', 'slo_ms = -1'), "slo_ms"),
        (ISSUE_EXAMPLE.replace('gamma:0.5', 'gamma:'), "bad arrival"),
        (ISSUE_EXAMPLE.replace('slots = 8', 'slots = 0'), "slots"),
        (ISSUE_EXAMPLE.replace('bench = [{rps = 400, seconds = 10}]', 'bench = []'), "bench"),
        (ISSUE_EXAMPLE.replace('sleep:1082,5204', 'sleep:1082'), "bad sleep profile"),
    ],
)
def test_mistakes_are_reported(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_workload(str(path))


def test_unknown_workload_lists_the_builtins() -> None:
    with pytest.raises(FileNotFoundError, match="example"):
        load_workload("no-such-workload")
