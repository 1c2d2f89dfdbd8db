"""STYLE §1: the pure core imports only the standard library allowed there, msgspec, numpy
and itself; no I/O, clocks, asyncio, randomness or logging."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = [ROOT / "shard" / "core"]
PURE_FILES = [ROOT / "coordinator" / "placement.py"]
FORBIDDEN = {"asyncio", "time", "os", "random", "logging", "structlog", "nats", "socket", "threading",
             "subprocess", "datetime", "load", "gpu_agent", "coordinator", "ops"}


def pure_modules() -> list[Path]:
    return sorted([p for package in PURE_PACKAGES for p in package.rglob("*.py")] + PURE_FILES)


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_import_nothing_impure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"
