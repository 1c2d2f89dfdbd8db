"""The model zoo: small JAX models with deterministic weights (no downloads).

Each model declares its input and output tensors (batch dimension -1) and is a pure function
`apply(params, inputs) -> outputs` on batched arrays, so the agent can jit and bucket it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from schemas.model import TensorSpec

Params = dict[str, jax.Array]


@dataclass(frozen=True)
class ZooModel:
    kind: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, dict[str, jax.Array]], dict[str, jax.Array]]

    def example_inputs(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Valid random inputs (what `symphony infer --random` sends)."""
        rng = np.random.default_rng(seed)
        arrays = {}
        for spec in self.inputs:
            shape = [batch_size, *spec.shape[1:]]
            if spec.datatype == "INT32":
                arrays[spec.name] = rng.integers(0, VOCAB, size=shape, dtype=np.int32)
            else:
                arrays[spec.name] = rng.standard_normal(shape).astype(np.float32)
        return arrays


def _dense(key: jax.Array, fan_in: int, fan_out: int) -> tuple[jax.Array, jax.Array]:
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * (2.0 / fan_in) ** 0.5
    return w, jnp.zeros((fan_out,), jnp.float32)


# ---- MLP ------------------------------------------------------------------------------------
def _mlp_init(key: jax.Array) -> Params:
    k1, k2, k3 = jax.random.split(key, 3)
    params = {}
    params["w1"], params["b1"] = _dense(k1, 64, 256)
    params["w2"], params["b2"] = _dense(k2, 256, 256)
    params["w3"], params["b3"] = _dense(k3, 256, 10)
    return params


def _mlp_apply(p: Params, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    h = jax.nn.relu(inputs["x"] @ p["w1"] + p["b1"])
    h = jax.nn.relu(h @ p["w2"] + p["b2"])
    return {"probabilities": jax.nn.softmax(h @ p["w3"] + p["b3"], axis=-1)}


# ---- small ResNet-style CNN -------------------------------------------------------------------
def _conv(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _cnn_init(key: jax.Array) -> Params:
    keys = jax.random.split(key, 7)
    def conv_w(k: jax.Array, cin: int, cout: int) -> jax.Array:
        return jax.random.normal(k, (3, 3, cin, cout), jnp.float32) * (2.0 / (9 * cin)) ** 0.5
    params = {"stem": conv_w(keys[0], 3, 16)}
    params["b1a"], params["b1b"] = conv_w(keys[1], 16, 16), conv_w(keys[2], 16, 16)
    params["down"] = conv_w(keys[3], 16, 32)
    params["b2a"], params["b2b"] = conv_w(keys[4], 32, 32), conv_w(keys[5], 32, 32)
    params["head_w"], params["head_b"] = _dense(keys[6], 32, 10)
    return params


def _cnn_apply(p: Params, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    x = jax.nn.relu(_conv(inputs["image"], p["stem"]))
    x = jax.nn.relu(x + _conv(jax.nn.relu(_conv(x, p["b1a"])), p["b1b"]))
    x = jax.nn.relu(_conv(x, p["down"], stride=2))
    x = jax.nn.relu(x + _conv(jax.nn.relu(_conv(x, p["b2a"])), p["b2b"]))
    pooled = x.mean(axis=(1, 2))
    return {"logits": pooled @ p["head_w"] + p["head_b"]}


# ---- small transformer encoder ------------------------------------------------------------
VOCAB = 1000
SEQ = 32
DIM = 64
HEADS = 4


def _encoder_init(key: jax.Array) -> Params:
    keys = jax.random.split(key, 10)
    params = {
        "embed": jax.random.normal(keys[0], (VOCAB, DIM), jnp.float32) * 0.02,
        "pos": jax.random.normal(keys[1], (SEQ, DIM), jnp.float32) * 0.02,
    }
    for layer in range(2):
        base = 2 + 4 * layer
        params[f"qkv{layer}"], _ = _dense(keys[base], DIM, 3 * DIM)
        params[f"out{layer}"], _ = _dense(keys[base + 1], DIM, DIM)
        params[f"ff1_{layer}"], params[f"ff1b_{layer}"] = _dense(keys[base + 2], DIM, 4 * DIM)
        params[f"ff2_{layer}"], params[f"ff2b_{layer}"] = _dense(keys[base + 3], 4 * DIM, DIM)
    return params


def _layer_norm(x: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)


def _encoder_apply(p: Params, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    tokens = jnp.clip(inputs["tokens"], 0, VOCAB - 1)
    x = p["embed"][tokens] + p["pos"]
    batch = x.shape[0]
    for layer in range(2):
        h = _layer_norm(x)
        qkv = (h @ p[f"qkv{layer}"]).reshape(batch, SEQ, 3, HEADS, DIM // HEADS)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / (DIM // HEADS) ** 0.5
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v).reshape(batch, SEQ, DIM)
        x = x + attn @ p[f"out{layer}"]
        h = _layer_norm(x)
        x = x + jax.nn.gelu(h @ p[f"ff1_{layer}"] + p[f"ff1b_{layer}"]) @ p[f"ff2_{layer}"] + p[f"ff2b_{layer}"]
    return {"embedding": _layer_norm(x).mean(axis=1)}


ZOO: dict[str, ZooModel] = {
    "mlp": ZooModel(
        "mlp", [TensorSpec(name="x", datatype="FP32", shape=[-1, 64])],
        [TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10])], _mlp_init, _mlp_apply,
    ),
    "cnn": ZooModel(
        "cnn", [TensorSpec(name="image", datatype="FP32", shape=[-1, 32, 32, 3])],
        [TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])], _cnn_init, _cnn_apply,
    ),
    "encoder": ZooModel(
        "encoder", [TensorSpec(name="tokens", datatype="INT32", shape=[-1, SEQ])],
        [TensorSpec(name="embedding", datatype="FP32", shape=[-1, DIM])], _encoder_init, _encoder_apply,
    ),
}
