"""Arrival processes shared by the simulator and the live load generator (reference §3.3).

`const` (fixed gaps), `poisson` (exponential gaps; `exp` is accepted too) and `gamma:<shape>`
(mean rate preserved, coefficient of variation 1/sqrt(shape); shape < 1 is bursty). Samples come
from a numpy Generator the caller seeds, so a seed gives the same schedule on every machine.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ArrivalProcess(NamedTuple):
    kind: str  # "const" | "poisson" | "gamma"
    shape: float = 1.0

    @property
    def name(self) -> str:
        return f"gamma:{self.shape:g}" if self.kind == "gamma" else self.kind


def parse_arrival(spec: str) -> ArrivalProcess:
    text = spec.strip().lower()
    if text == "const":
        return ArrivalProcess("const")
    if text in ("poisson", "exp"):
        return ArrivalProcess("poisson")
    if text.startswith("gamma:"):
        try:
            shape = float(text.split(":", 1)[1])
        except ValueError:
            shape = -1.0
        if not shape > 0:
            raise ValueError(f"bad arrival {spec!r}: gamma shape must be a positive number")
        return ArrivalProcess("gamma", shape)
    raise ValueError(f"bad arrival {spec!r}: expected const, poisson or gamma:<shape>")


def gaps_s(process: ArrivalProcess, rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` inter-arrival gaps in seconds with mean 1/rps."""
    if process.kind == "const":
        return np.full(n, 1.0 / rps)
    if process.kind == "poisson":
        return rng.exponential(1.0 / rps, n)
    return rng.gamma(process.shape, 1.0 / (process.shape * rps), n)


def segment_arrivals_s(
    process: ArrivalProcess,
    rps: float,
    after_s: float,
    end_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Arrival instants in (after_s, end_s): the first one gap after `after_s`."""
    if rps <= 0 or end_s <= after_s:
        return np.empty(0)
    chunks: list[np.ndarray] = []
    last = after_s
    expected = rps * (end_s - after_s)
    while True:
        n = int(expected * 1.05 + 6 * expected**0.5 + 16)
        times = last + np.cumsum(gaps_s(process, rps, n, rng))
        inside = times[times < end_s]
        chunks.append(inside)
        if len(inside) < n:
            break
        last = float(times[-1])
        expected = rps * (end_s - last)
    return np.concatenate(chunks)
