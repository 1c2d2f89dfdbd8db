"""Workload files: the documented TOML form parses; mistakes get clear errors."""

from pathlib import Path

import pytest

from load.bound import analytic_bound
from load.workload import BUILTIN_DIR, classes_of_slots, load_workload, slot_mix, with_slot_speeds

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


# ---- mixed fleets (issue 16) ------------------------------------------------------------------
def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "w.toml"
    path.write_text(text)
    return str(path)


TABLE = """tensorflow:resnet_a:1
T4
Forward latency
batch,latency,std,memory
1,9000,0,5
2,12000,0,5
Preprocess latency
mean(us),std(us)
100,0
Postprocess latency
mean(us),std(us)
50,0
"""


def test_slot_speeds_name_a_class_per_speed_with_the_profiles_slowed() -> None:
    loaded = load_workload("mixed")
    assert loaded.slot_classes == ["x1.0"] * 4 + ["x0.5"] * 4
    example = load_workload("example").profiles["resnet_0"]
    assert loaded.class_profiles["x1.0"]["resnet_0"] is loaded.profiles["resnet_0"]
    assert loaded.class_profiles["x0.5"]["resnet_0"].forward_us(3) == 2 * example.forward_us(3)


@pytest.mark.parametrize("speeds", ["[1.0, 1, 1.0, 1, 1, 1, 1, 1]", None])
def test_a_fleet_all_at_speed_one_has_no_classes(tmp_path: Path, speeds: str | None) -> None:
    text = ISSUE_EXAMPLE if speeds is None else ISSUE_EXAMPLE.replace("slots = 8", f"slots = 8\nslot_speeds = {speeds}")
    loaded = load_workload(_write(tmp_path, text))
    assert loaded.slot_classes == [] and loaded.class_profiles == {}


def test_the_slot_pattern_repeats_over_more_slots_and_names_the_mix() -> None:
    loaded = load_workload("mixed")
    assert classes_of_slots(loaded, 3) == ["x1.0"] * 3
    assert classes_of_slots(loaded, 10) == ["x1.0"] * 4 + ["x0.5"] * 4 + ["x1.0"] * 2
    assert slot_mix(classes_of_slots(loaded, 8)) == "4x1.0 + 4x0.5"
    assert slot_mix(classes_of_slots(load_workload("example"), 8)) == ""


CLASSES = """
[[slot_classes]]
name = "a100"
slots = [0, 1, 2]

[[slot_classes]]
name = "t4"
slots = [3, 4, 5, 6, 7]
profiles = {resnet_a = "profiles/t4.csv"}
"""


def test_slot_classes_read_profile_tables_relative_to_the_workload_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "t4.csv").write_text(TABLE)
    loaded = load_workload(_write(tmp_path, ISSUE_EXAMPLE + CLASSES))
    assert loaded.slot_classes == ["a100"] * 3 + ["t4"] * 5
    assert loaded.class_profiles["a100"]["resnet_a"] is loaded.profiles["resnet_a"]  # not listed: the default
    t4 = loaded.class_profiles["t4"]["resnet_a"]
    assert (t4.device, t4.batch_size_max, t4.forward_us(2)) == ("T4", 2, 12000)


HALF = "[1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]"


@pytest.mark.parametrize(
    ("speeds", "classes", "message"),
    [
        ("[1.0, 0.5]", "", "2 entries for 8 slots"),
        ("[1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.0]", "", "finite and > 0"),
        ("[1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, -2]", "", "finite and > 0"),
        ("[1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, inf]", "", "finite and > 0"),
        (HALF, CLASSES, "slot_speeds or slot_classes"),
        ("", CLASSES.replace("[3, 4, 5, 6, 7]", "[2, 3, 4, 5, 6, 7]"), "slot 2 is in both"),
        ("", CLASSES.replace("[3, 4, 5, 6, 7]", "[3, 4, 5, 6]"), r"slots \[7\] are in no slot class"),
        ("", CLASSES.replace("[3, 4, 5, 6, 7]", "[3, 4, 5, 6, 7, 8]"), "slot 8 is out of range"),
        ("", CLASSES.replace('"t4"', '"a100"'), "names must be unique"),
        ("", CLASSES.replace("resnet_a =", "resnet_b ="), r"unknown models \['resnet_b'\]"),
        ("", CLASSES, "t4.csv"),  # the table file is missing
    ],
)
def test_mixed_fleet_mistakes_are_reported(tmp_path: Path, speeds: str, classes: str, message: str) -> None:
    text = ISSUE_EXAMPLE.replace("slots = 8", f"slots = 8\nslot_speeds = {speeds}") if speeds else ISSUE_EXAMPLE
    with pytest.raises(ValueError, match=message):
        load_workload(_write(tmp_path, text + classes))


def test_with_slot_speeds_validates_and_builds_the_classes() -> None:
    example = load_workload("example")
    half = with_slot_speeds(example, [0.5] * 6)
    assert half.workload.slots == 6 and half.slot_classes == ["x0.5"] * 6
    assert with_slot_speeds(example, [1.0] * 8).slot_classes == []
    with pytest.raises(ValueError, match="finite and > 0"):
        with_slot_speeds(example, [1.0, 0.0])
