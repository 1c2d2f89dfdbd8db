"""The cluster config (TOML): models, agents with their slots, shards with their models and
slots. Until the coordinator exists (issue 6) this is where ownership comes from."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.autoscale import AutoscaleConfig
from schemas.limits import BATCH_SIZE_LIMIT, Identifier, ModelName, SloMs, Text, validate_identifier
from schemas.model import InvalidModelName, validate_model_name

# Ids and model names become subject tokens and KV keys: one token each (schemas/limits.py,
# schemas.model.validate_model_name), checked here before any subject is formed from them.
Name = Identifier

# A role's Prometheus endpoint (runtime/metrics_http.py): N serves on port N, 0 on a free port the
# OS picks, -1 serves none; unset (None), a role serves on a free port when `symphony up` or
# `symphony demo` starts it (they set METRICS_ENV) and none when started on its own. The port a
# role got is in its status snapshot (`symphony status`).
MetricsPort = Annotated[int, Meta(ge=-1, le=65535)] | None
METRICS_OFF = -1
METRICS_ENV = "SYMPHONY_METRICS"  # "free": a role whose metrics_port is unset serves on a free port
# Where every role's endpoint listens: loopback by default, since the metrics name models and
# slots; "0.0.0.0" (or "::") exposes them on every interface, for a Prometheus on another host.
MetricsHost = Annotated[str, Meta(min_length=1, max_length=253)]


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: ModelName
    kind: Text  # a zoo model (mlp, cnn, encoder) or sleep:<slope_us>,<intercept_us>
    slo_ms: SloMs
    batch_size_max: Annotated[int, Meta(ge=1, le=BATCH_SIZE_LIMIT)] = 32


class SlotEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Name
    models: list[ModelName]


class AgentEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Name
    slots: list[SlotEntry]
    plan_queue_max: Annotated[int, Meta(ge=1)] = 64
    metrics_port: MetricsPort = None  # Prometheus endpoint (see MetricsPort)
    # A mixed fleet (issue 16) without mixed GPUs: sleep models here run `speed` times as fast as
    # their spec says (0.5: twice as slow). Only for agents that run sleep models alone.
    speed: Annotated[float, Meta(gt=0, le=1000)] = 1.0
    # The class of this agent's slots: shards keep a profile per class. "": the JAX device kind,
    # or for sleep agents `sleep` (speed 1) or `sleep@<speed>x`.
    slot_class: Text = ""


class ShardEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Name
    models: list[ModelName] = []  # static ownership; with a coordinator the assignment decides
    slots: list[Name] = []
    policy: str = ""  # a scheduling policy by name; "": the core's default (shard.core.policies)
    queue_len_max: Annotated[int, Meta(ge=1)] = 20_000  # requests held per shard; beyond: 429
    body_bytes_max: Annotated[int, Meta(ge=1)] = 900_000  # beyond: 413 (NATS max payload is 1 MiB)
    slot_grace_ms: Annotated[float, Meta(gt=0)] = 2000.0  # missing report past finish + this: slot lost
    metrics_port: MetricsPort = None  # Prometheus endpoint (see MetricsPort)
    # Latency constants of the live path (the core's Dctrl, Ddata, Dresp and timer jitter). The
    # reference's 100/50/2000/100 us assume RDMA and a spinning C++ loop; a Python shard on NATS
    # sends a plan in a few hundred us, and its timers fire late by as much as the host is busy.
    # Deferral waits until the last safe moment minus the jitter, so a wake-up later than the
    # jitter turns into drops: set it above the shard's worst timer lateness (the shard logs
    # `late_wake_up` when a wake-up is later than this).
    ctrl_us: Annotated[int, Meta(ge=0)] = 500
    data_us: Annotated[int, Meta(ge=0)] = 10
    resp_us: Annotated[int, Meta(ge=0)] = 2000
    jitter_us: Annotated[int, Meta(ge=0)] = 5000
    # Consolidation's margin: a batch is queued behind a busy preferred slot only if that slot is
    # predicted free this long before the batch starts, else it takes an idle slot (a batch that
    # overruns its profile would otherwise expire the one packed behind it).
    pack_guard_us: Annotated[int, Meta(ge=0)] = 5000


AUTOSCALE_ENV = "SYMPHONY_AUTOSCALE"  # "1": `symphony up --autoscale` turned the autoscaler on


class AutoscaleEntry(AutoscaleConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[coordinator.autoscale]`: the autoscaler's settings (schemas/autoscale.py) and a switch."""

    enabled: bool = False  # off: every slot serves (`symphony up --autoscale` turns it on)

    def decision(self) -> AutoscaleConfig:
        """The settings without the switch."""
        return AutoscaleConfig(**{f: getattr(self, f) for f in AutoscaleConfig.__struct_fields__})


class CoordinatorEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """With this section, a coordinator assigns models and slots to shards (issue 6)."""

    count: Annotated[int, Meta(ge=1)] = 2  # coordinator processes `symphony up` starts (one leads)
    epoch_s: Annotated[float, Meta(gt=0)] = 5.0
    lease_s: Annotated[float, Meta(gt=0)] = 3.0  # a leader silent this long is replaced
    heartbeat_ttl_s: Annotated[float, Meta(gt=0)] = 3.0  # a member silent this long is gone
    target_utilization: Annotated[float, Meta(gt=0, le=1)] = 0.8
    # The request rate one shard takes before a model arriving faster is split across shards
    # (issue 14; 0: never split). BENCHMARKS §4: one shard keeps at least 5,000 req/s on the
    # per-request path on two cores; 4,000 leaves it a fifth of headroom.
    shard_rps_max: Annotated[float, Meta(ge=0)] = 4000.0
    kv_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    metrics_port: MetricsPort = None  # each coordinator's Prometheus endpoint (see MetricsPort)
    autoscale: AutoscaleEntry = AutoscaleEntry()


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    subject_prefix: Name = "symphony"
    models: list[ModelEntry]
    agents: list[AgentEntry]
    shards: list[ShardEntry]
    coordinator: CoordinatorEntry | None = None
    metrics_host: MetricsHost = "127.0.0.1"

    @property
    def dynamic(self) -> bool:
        return self.coordinator is not None

    def __post_init__(self) -> None:
        models = {m.name for m in self.models}
        if len(models) != len(self.models):
            raise ValueError("model names must be unique")
        _check_speeds(self.agents, {m.name: m.kind for m in self.models})
        slots: dict[str, set[str]] = {}
        for agent in self.agents:
            for slot in agent.slots:
                if slot.id in slots:
                    raise ValueError(f"slot {slot.id} is declared twice")
                unknown = set(slot.models) - models
                if unknown:
                    raise ValueError(f"slot {slot.id} hosts unknown models {sorted(unknown)}")
                slots[slot.id] = set(slot.models)
        if self.coordinator is not None:
            if not self.shards:
                raise ValueError("a cluster with a coordinator still needs one [[shards]] entry as a template")
            return  # the coordinator checks ownership at every epoch
        owned: set[str] = set()
        for shard in self.shards:
            for model in shard.models:
                if model not in models:
                    raise ValueError(f"shard {shard.id} owns unknown model {model}")
                if model in owned:
                    raise ValueError(f"model {model} is owned by two shards")
                owned.add(model)
            for slot in shard.slots:
                if slot not in slots:
                    raise ValueError(f"shard {shard.id} names unknown slot {slot}")
                missing = set(shard.models) - slots[slot]
                if missing:
                    # The core assumes any of its slots can run any of its models.
                    raise ValueError(f"slot {slot} of shard {shard.id} does not host {sorted(missing)}")

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)

    def shard(self, shard_id: str) -> ShardEntry:
        for shard in self.shards:
            if shard.id == shard_id:
                return shard
        if self.dynamic:  # scaled-out shards take the first entry's settings
            validate_identifier(shard_id, "shard id")
            template = self.shards[0]  # its fixed port is its own: a scaled-out shard takes a free one
            port = 0 if template.metrics_port is not None and template.metrics_port > 0 else template.metrics_port
            return msgspec.structs.replace(template, id=shard_id, models=[], slots=[], metrics_port=port)
        raise ValueError(f"no shard {shard_id!r} in the config")

    def agent(self, agent_id: str) -> AgentEntry:
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        raise ValueError(f"no agent {agent_id!r} in the config")

    def slot_models(self) -> dict[str, frozenset[str]]:
        """slot -> the models it can run (its agent loads them all at start)."""
        return {slot.id: frozenset(slot.models) for agent in self.agents for slot in agent.slots}

    def slot_ids(self) -> list[str]:
        """Every slot of every agent, sorted: the autoscaler's preference order (most preferred
        first; it drains from the end)."""
        return sorted(slot.id for agent in self.agents for slot in agent.slots)

    def agent_of_slot(self, slot_id: str) -> str:
        return next(a.id for a in self.agents for s in a.slots if s.id == slot_id)


def _check_speeds(agents: list[AgentEntry], kinds: dict[str, str]) -> None:
    """A speed fakes a faster or slower device for sleep models; a JAX model runs at the speed of
    the device it is on, so an agent with one cannot be given another."""
    for agent in agents:
        if agent.speed == 1.0:
            continue
        real = sorted({m for slot in agent.slots for m in slot.models
                       if not kinds.get(m, "sleep:").startswith(("sleep:", "sleep#"))})
        if real:
            raise ValueError(f"agent {agent.id} has speed {agent.speed:g}, but a speed applies to sleep "
                             f"models only and it runs {real}")


def metrics_on_free_ports(config: ClusterConfig) -> ClusterConfig:
    """`config` with every unset `metrics_port` set to 0 (a free port), as `symphony up` runs it;
    the ones the config sets (a fixed port, or -1 for none) stay as written."""

    def free(entry):  # noqa: ANN001, ANN202 - any role's entry
        return entry if entry is None or entry.metrics_port is not None else msgspec.structs.replace(
            entry, metrics_port=0)

    return msgspec.structs.replace(config, agents=[free(a) for a in config.agents],
                                   shards=[free(s) for s in config.shards], coordinator=free(config.coordinator))


def load_cluster_config(path: str | Path) -> ClusterConfig:
    path = Path(path)
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    models = raw.get("models")
    for entry in models if isinstance(models, list) else []:
        if isinstance(entry, dict) and "name" in entry:
            try:  # the same rule as the decoder's, with a message that says what a name may be
                validate_model_name(entry["name"])
            except InvalidModelName as error:
                raise ValueError(f"{path}: {error}") from None
    try:
        return msgspec.convert(raw, ClusterConfig)
    except msgspec.ValidationError as error:
        raise ValueError(f"{path}: {error}") from None


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "ops" / "demo.toml"  # what `make demo` runs
