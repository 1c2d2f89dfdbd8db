"""STYLE §1: the pure core imports only the standard library allowed there, msgspec, numpy,
the wire schemas and other pure modules; no I/O, clocks, asyncio, randomness or logging."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = [ROOT / "shard" / "core"]
PURE_FILES = [ROOT / "coordinator" / name for name in ("placement.py", "demand.py", "membership.py", "epoch.py", "rates.py",
                                                       "core.py")] + [ROOT / "gpu_agent" / "fencing.py"]
FORBIDDEN = {"asyncio", "time", "os", "random", "logging", "structlog", "nats", "socket", "threading",
             "subprocess", "datetime", "load", "ops"}
PROJECT = {"coordinator", "gpu_agent", "shard", "schemas", "load", "ops"}


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
