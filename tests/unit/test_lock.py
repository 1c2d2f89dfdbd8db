"""`make demo` and `make test` install exactly the locked versions (issue 15): constraints.txt pins
every distribution exactly, pip and setuptools included, and the checkout's `.venv` holds those
and nothing else. `make lock` is how the pins move (see the file's header)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
PROJECT = "symphony-serve"  # installed editable from the checkout, never pinned


def canonical(name: str) -> str:
    """PEP 503: `PyNaCl`, `ml_dtypes` and `zope.event` are `pynacl`, `ml-dtypes`, `zope-event`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """name -> version of each `name==version` line; comments and blank lines are skipped."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip() and not any(c in version for c in "<>=!~;, "), (
            f"constraints.txt:{number}: {raw!r} is not an exact pin (name==version)")
        assert canonical(name) not in found, f"constraints.txt:{number}: {name} is pinned twice"
        found[canonical(name.strip())] = version.strip()
    return found


def installed() -> dict[str, set[str]]:
    """name -> the versions of it this interpreter can import (more than one is a broken venv)."""
    versions: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        versions.setdefault(canonical(dist.metadata["Name"]), set()).add(dist.version)
    versions.pop(PROJECT, None)
    return versions


def test_the_lock_pins_every_line_exactly_with_pip_and_setuptools() -> None:
    locked = pins(LOCK.read_text())
    assert {"pip", "setuptools"} <= set(locked), "make installs pip and setuptools from the lock: pin them"
    assert PROJECT not in locked


def test_the_checkouts_venv_holds_exactly_the_locked_versions() -> None:
    venv = ROOT / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip(f"runs only in this checkout's .venv, which make installs from the lock ({venv}); "
                    f"this interpreter's is {sys.prefix}")
    locked, found = pins(LOCK.read_text()), installed()
    wrong = {name: sorted(v) for name, v in found.items() if name in locked and v != {locked[name]}}
    extra = {name: sorted(v) for name, v in found.items() if name not in locked}
    missing = sorted(set(locked) - set(found))
    assert not (wrong or extra or missing), (
        f"{venv} differs from constraints.txt: other versions {wrong}, not locked {extra}, not installed "
        f"{missing}; make clean test rebuilds it from the lock, make lock moves the lock on purpose")
