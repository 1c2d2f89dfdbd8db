"""Model specs and discovery metadata (Open Inference Protocol model metadata)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.profile import ModelProfile


class TensorSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    datatype: str
    shape: list[int]  # -1 for the batch dimension (first)


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A model as the registry knows it: what it takes, how long it may take, what it costs."""

    version: int = 1
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]+$", min_length=1, max_length=128)]
    platform: str  # "jax" | "sleep"
    slo_ms: Annotated[float, Meta(gt=0)]
    batch_size_max: Annotated[int, Meta(ge=1)]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profile: ModelProfile | None = None


class ModelMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to `symphony.meta.<model>`."""

    name: str
    platform: str
    versions: list[str] = msgspec.field(default_factory=lambda: ["1"])
    slo_ms: float
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to `symphony.meta`."""

    models: list[str]


def metadata_of(spec: ModelSpec) -> ModelMetadata:
    return ModelMetadata(
        name=spec.name, platform=spec.platform, slo_ms=spec.slo_ms, max_batch_size=spec.batch_size_max,
        inputs=spec.inputs, outputs=spec.outputs,
    )
