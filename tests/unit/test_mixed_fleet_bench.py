"""The mixed-fleet benchmark's report: means over seeds, fractions of the bound, and the issue's
ratios, from probes (the capacity searches themselves are the simulator's, tested there)."""

from pathlib import Path

from load.bench.mixed_fleet import Probe, plot, report


def _probes() -> list[Probe]:
    rows = [("symphony-plus", "per_slot", 42, 5.4), ("symphony-plus", "per_slot", 1, 5.6),
            ("symphony-plus", "slowest", 42, 4.7), ("symphony-plus", "slowest", 1, 4.9),
            ("eager", "per_slot", 42, 5.0), ("eager", "per_slot", 1, 5.2),
            ("eager", "slowest", 42, 4.8), ("eager", "slowest", 1, 4.8)]
    return [Probe(p, m, s, c, 6.0, "4x1.0 + 4x0.5") for p, m, s, c in rows]


def test_the_report_gives_means_fractions_and_the_issue_ratios() -> None:
    lines = report(_probes(), ["symphony-plus", "eager"])
    text = "\n".join(lines)
    assert "4x1.0 + 4x0.5" in lines[0] and "6.000" in lines[0]
    assert any(line.startswith("symphony-plus   per_slot     5.500     0.917") for line in lines), text
    assert "per-slot / slowest: 1.146" in text  # 5.5 / 4.8
    assert "of the mixed bound: 0.917" in text
    assert "vs eager per-slot: 1.078" in text  # 5.5 / 5.1


def test_the_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "mixed.png"
    plot(_probes(), ["symphony-plus", "eager"], path)
    assert path.stat().st_size > 1000
