"""Model specs and discovery metadata (Open Inference Protocol model metadata), and the rule for
model names: they become NATS subject tokens (`symphony.infer.<model>`), so every entry point that
takes one (config, coordinator registry, client, load generator) checks it with
`validate_model_name` before it reaches a subject."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.codec import json_decoder
from schemas.limits import (
    BATCH_SIZE_LIMIT,
    MODEL_NAME_LEN_MAX,
    MODEL_NAME_PATTERN,
    NAMES_MAX,
    TENSOR_NAME_LEN_MAX,
    TENSOR_RANK_MAX,
    TENSORS_MAX,
    InvalidName,
    ModelName,
    SloMs,
    Text,
    Version,
)
from schemas.profile import ModelProfile

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
DATATYPE_PATTERN = r"^(BOOL|UINT8|INT8|INT16|INT32|INT64|FP16|FP32|FP64)\Z"  # schemas.tensors.DATATYPES


class InvalidModelName(InvalidName):
    """A model name that cannot be one subject token (a 400 where a server meets it)."""


def validate_model_name(name: object) -> str:
    """`name` if it is a valid model name, else InvalidModelName saying what a name may be.

    1-64 ASCII letters, digits, `_` or `-`, starting with a letter or digit: no dots (they split
    subjects), wildcards (`*`, `>`), whitespace or control characters.
    """
    if not isinstance(name, str) or _MODEL_NAME.match(name) is None:
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1-{MODEL_NAME_LEN_MAX} letters, digits, '_' or '-', "
            "starting with a letter or digit (no dots, wildcards, '>', spaces or control characters)"
        )
    return name


Dim = Annotated[int, Meta(ge=-1, le=1 << 31)]  # -1: the batch dimension


class TensorSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=TENSOR_NAME_LEN_MAX)]
    datatype: Annotated[str, Meta(pattern=DATATYPE_PATTERN)]
    shape: Annotated[list[Dim], Meta(max_length=TENSOR_RANK_MAX)]  # -1 for the batch dimension (first)


Tensors = Annotated[list[TensorSpec], Meta(max_length=TENSORS_MAX)]


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A model as the registry knows it: what it takes, how long it may take, what it costs."""

    version: Version = 1
    name: ModelName
    platform: Text  # "jax" | "sleep"
    slo_ms: SloMs
    batch_size_max: Annotated[int, Meta(ge=1, le=BATCH_SIZE_LIMIT)]
    inputs: Tensors
    outputs: Tensors
    profile: ModelProfile | None = None


class ModelMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to `symphony.meta.<model>`."""

    name: ModelName
    platform: Text
    versions: Annotated[list[Text], Meta(max_length=NAMES_MAX)] = msgspec.field(default_factory=lambda: ["1"])
    slo_ms: SloMs
    max_batch_size: Annotated[int, Meta(ge=1, le=BATCH_SIZE_LIMIT)]
    inputs: Tensors
    outputs: Tensors


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to `symphony.meta`."""

    models: Annotated[list[ModelName], Meta(max_length=NAMES_MAX)]


def metadata_of(spec: ModelSpec) -> ModelMetadata:
    return ModelMetadata(
        name=spec.name, platform=spec.platform, slo_ms=spec.slo_ms, max_batch_size=spec.batch_size_max,
        inputs=spec.inputs, outputs=spec.outputs,
    )


# Typed decoders for discovery replies (the client and the load generator).
model_metadata_decoder = json_decoder(ModelMetadata)
model_list_decoder = json_decoder(ModelList)
