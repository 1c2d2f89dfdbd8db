"""Model runners: a JAX zoo model compiled per bucketed batch size and profiled, or a `sleep`
model that only waits its profiled time. Both take stacked numpy inputs and return outputs.

Batches are padded up to the next bucket (a power of two up to the model's max batch), so
nothing compiles on the request path; the published profile is the bucket's latency for every
batch size it covers, which is what the scheduler should plan with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from gpu_agent.zoo import ZOO, ZooModel
from schemas.model import ModelSpec, TensorSpec
from schemas.profile import ModelProfile, profile_from_sleep_spec


def buckets_up_to(batch_size_max: int) -> list[int]:
    sizes, b = [], 1
    while b < batch_size_max:
        sizes.append(b)
        b *= 2
    sizes.append(batch_size_max)
    return sizes


def bucket_for(batch_size: int, buckets: list[int]) -> int:
    for bucket in buckets:
        if bucket >= batch_size:
            return bucket
    raise ValueError(f"batch of {batch_size} exceeds the largest bucket {buckets[-1]}")


@dataclass
class JaxRunner:
    """A zoo model on JAX's default device, compiled ahead of time for every bucket."""

    name: str
    model: ZooModel
    batch_size_max: int
    slo_ms: float
    seed: int = 0
    buckets: list[int] = field(default_factory=list)
    compiled: dict[int, object] = field(default_factory=dict)
    compile_count: int = 0
    profile: ModelProfile | None = None

    def load(self, repeats: int = 10) -> None:
        params = self.model.init(jax.random.PRNGKey(self.seed))
        self.params = jax.device_put(params)
        self.buckets = buckets_up_to(self.batch_size_max)
        apply = jax.jit(self.model.apply)
        for bucket in self.buckets:
            example = {k: jnp.asarray(v) for k, v in self.model.example_inputs(bucket).items()}
            self.compiled[bucket] = apply.lower(self.params, example).compile()
            self.compile_count += 1
        self.profile = self._measure(repeats)

    def _measure(self, repeats: int) -> ModelProfile:
        means: list[float] = []
        stds: list[float] = []
        per_bucket: dict[int, tuple[float, float]] = {}
        for bucket in self.buckets:
            inputs = self.model.example_inputs(bucket, seed=1)
            for _ in range(2):
                self.run_padded(inputs, bucket)  # warm-up
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                self.run_padded(inputs, bucket)
                samples.append((time.perf_counter() - started) * 1e6)
            per_bucket[bucket] = (statistics.fmean(samples), statistics.pstdev(samples))
        for b in range(1, self.batch_size_max + 1):
            mean, std = per_bucket[bucket_for(b, self.buckets)]
            means.append(mean)
            stds.append(std)
        return ModelProfile(profile_id=f"{self.name}:{self.model.kind}", device=jax_device_class(),
                            forward_mean_us=means, forward_std_us=stds).monotone()

    def run_padded(self, inputs: dict[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
        outputs = self.compiled[bucket](self.params, inputs)
        return {k: np.asarray(v) for k, v in outputs.items()}

    def run(self, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
        """Pad to the bucket, run the precompiled executable, return the first `batch_size` rows."""
        bucket = bucket_for(batch_size, self.buckets)
        if bucket != batch_size:
            inputs = {k: np.concatenate([v, np.zeros((bucket - batch_size, *v.shape[1:]), v.dtype)])
                      for k, v in inputs.items()}
        outputs = self.run_padded(inputs, bucket)
        return {k: v[:batch_size] for k, v in outputs.items()}

    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, platform="jax", slo_ms=self.slo_ms, batch_size_max=self.batch_size_max,
                         inputs=self.model.inputs, outputs=self.model.outputs, profile=self.profile)


SLEEP_INPUTS = [TensorSpec(name="x", datatype="FP32", shape=[-1, 1])]
SLEEP_OUTPUTS = [TensorSpec(name="y", datatype="FP32", shape=[-1, 1])]


@dataclass
class SleepRunner:
    """`sleep:<slope_us>,<intercept_us>`: waits its profiled time and echoes its input. It runs
    through the same agent code path as a JAX model; the agent awaits `duration_s`. `speed`
    fakes a device that many times as fast (issue 16: a mixed fleet without mixed GPUs): it
    sleeps the scaled time and publishes the scaled profile."""

    name: str
    spec_text: str
    batch_size_max: int
    slo_ms: float
    speed: float = 1.0
    compile_count: int = 0
    profile: ModelProfile | None = None

    def load(self, repeats: int = 0) -> None:
        self.profile = profile_from_sleep_spec(self.spec_text, self.batch_size_max).at_speed(self.speed)
        self._model_profile = self.profile  # what it sleeps; `profile` may gain the agent's own costs

    def duration_s(self, batch_size: int) -> float:
        p = self._model_profile
        return (p.forward_us(batch_size) + p.pre_us + p.post_us) / 1e6

    def run(self, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
        return {"y": inputs["x"].astype(np.float32)}

    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, platform="sleep", slo_ms=self.slo_ms, batch_size_max=self.batch_size_max,
                         inputs=SLEEP_INPUTS, outputs=SLEEP_OUTPUTS, profile=self.profile)


Runner = JaxRunner | SleepRunner


def is_sleep_kind(kind: str) -> bool:
    return kind.startswith(("sleep:", "sleep#"))


def make_runner(name: str, kind: str, batch_size_max: int, slo_ms: float, speed: float = 1.0) -> Runner:
    """`kind` is a zoo name (mlp, cnn, encoder) or a sleep spec; `speed` applies to sleep only
    (the cluster config refuses it elsewhere: a real device runs at its own speed)."""
    if is_sleep_kind(kind):
        return SleepRunner(name=name, spec_text=kind, batch_size_max=batch_size_max, slo_ms=slo_ms, speed=speed)
    if kind not in ZOO:
        raise ValueError(f"unknown model kind {kind!r}; zoo models: {', '.join(ZOO)} or sleep:<slope>,<intercept>")
    return JaxRunner(name=name, model=ZOO[kind], batch_size_max=batch_size_max, slo_ms=slo_ms)


def jax_device_class() -> str:
    """The kind of JAX's default device ("NVIDIA H200", "cpu"): what a slot's speed depends on.
    `str(device)` would not do: it is "cuda:0" on every GPU model."""
    return jax.devices()[0].device_kind


def sleep_class(speed: float) -> str:
    """`sleep` at speed 1, else `sleep@0.5x`: sleep slots of one speed form one class."""
    return "sleep" if speed == 1.0 else f"sleep@{speed:g}x"


def slot_class(configured: str, speed: float, runners: Iterable[Runner]) -> str:
    """The class of an agent's slots (issue 16), the `device` it reports everywhere (info,
    heartbeat, status, published profiles) and the key of its models' per-class profiles: the
    configured name if any, else the JAX device kind where it runs a JAX model, else the sleep
    speed's class."""
    if configured:
        return configured
    if any(isinstance(r, JaxRunner) for r in runners):
        return jax_device_class()
    return sleep_class(speed)
