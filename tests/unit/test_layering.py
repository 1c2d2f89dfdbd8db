"""STYLE §1: the pure core imports only the standard library allowed there, msgspec, numpy,
the wire schemas and other pure modules; no I/O, clocks, asyncio, randomness or logging."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = [ROOT / "shard" / "core"]
PURE_FILES = [ROOT / "coordinator" / name for name in ("placement.py", "demand.py", "membership.py", "epoch.py",
                                                       "rates.py", "autoscale.py", "slots.py",
                                                       "core.py")] + [
    ROOT / "gpu_agent" / name for name in ("fencing.py", "decisions.py")] + [ROOT / "runtime" / "actuator.py",
                                                                          ROOT / "gateway" / "oip.py"]
FORBIDDEN = {"asyncio", "time", "os", "random", "logging", "structlog", "nats", "socket", "threading",
             "subprocess", "datetime", "load", "ops"}
PROJECT = {"coordinator", "gpu_agent", "gateway", "shard", "schemas", "load", "ops"}


def pure_modules() -> list[Path]:
    return sorted([p for package in PURE_PACKAGES for p in package.rglob("*.py")] + PURE_FILES)


def module_path(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_import_nothing_impure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    roots = {name.split(".")[0] for name in imported}
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"
    pure = set(pure_modules())
    impure = sorted(name for name in imported if name.split(".")[0] in PROJECT - {"schemas"}
                    and module_path(name) not in pure and module_path(name).exists())
    assert not impure, f"{path.name} imports project modules that are not pure: {impure}"


# ---- the folder DAG (issue 12) ------------------------------------------------------------------
# schemas <- runtime <- {shard, gpu_agent, coordinator, gateway} <- load <- ops. A folder imports
# only folders of its own layer or below; shard and gpu_agent never import each other (they meet on
# the wire), nor does the gateway import any other service; the coordinator imports nothing from load.
LAYER = {"schemas": 0, "runtime": 1, "shard": 2, "gpu_agent": 2, "coordinator": 2, "gateway": 2, "load": 3, "ops": 4}
SERVICES = ("shard", "gpu_agent", "coordinator", "gateway")
NEVER = {("shard", "gpu_agent"), ("gpu_agent", "shard")} | {("gateway", s) for s in SERVICES if s != "gateway"}
# The simulator (load/sim) apart from its CLI is pure too: virtual time and seeded randomness
# only, no I/O, no asyncio, no NATS.
SIM_FORBIDDEN = {"asyncio", "os", "socket", "threading", "subprocess", "nats", "structlog", "logging", "datetime",
                 "runtime", "ops"}


def imports_of(path: Path) -> set[str]:
    """Every absolute import in the file, function-level ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def project_files() -> list[Path]:
    return sorted(p for folder in LAYER for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_points_up_the_folder_dag(path: Path) -> None:
    here = path.relative_to(ROOT).parts[0]
    wrong = sorted(name for name in imports_of(path) if (top := name.split(".")[0]) in LAYER
                   and (LAYER[top] > LAYER[here] or (here, top) in NEVER))
    assert not wrong, f"{path.relative_to(ROOT)} (layer {LAYER[here]}) imports {wrong}"


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "load" / "sim").glob("*.py") if p.name != "cli.py"),
                         ids=lambda p: p.name)
def test_the_simulator_is_pure(path: Path) -> None:
    """It drives the live decision code, so it may import a pure module of any layer (the local
    actuator's rule, runtime/actuator.py), but no I/O."""
    pure = set(pure_modules())
    roots = {name.split(".")[0] for name in imports_of(path) if module_path(name) not in pure}
    assert not roots & SIM_FORBIDDEN, f"{path.name} imports {sorted(roots & SIM_FORBIDDEN)}"
