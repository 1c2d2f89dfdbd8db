"""The coordinator's epoch decision at scale (issue 14): how long one epoch takes to plan at
10-200 shards, 100-2,000 slots and 50-1,000 models, against the 5 s epoch.

    python -m load.bench.coordinator_epoch                      # the four sizes below, ~5 min
    python -m load.bench.coordinator_epoch --sizes 100/1000/500 --epochs 40
    python -m load.bench.coordinator_epoch --no-autoscale --out results/bench-coordinator-epoch-noas

Each size is a synthetic cluster drawn from `--seed`: device classes of agents (8 slots each;
h100/a100/l4/t4 in shares 4:3:2:1), models hosted on one class (85%) or two neighbouring
classes (15%), so placement sees several host classes; linear sleep profiles (slope 100-2,000 us
per request, intercept 1-8 ms) with SLOs of 25-500 ms that fit them; each agent reports its own
measured profile of each model it hosts (the nominal one +-5%), as live agents do; rates drawn
log-normally (sigma 1.5) and scaled so each class's demand is ~60% of its slots.

What is timed, per epoch (`--epochs`, the first, cold placement reported apart):
- `core epoch`: `CoordinatorCore.handle(AssignmentRead)` (coordinator/core.py), the whole
  decision the live coordinator makes inline in its event loop once it has read the assignment:
  profiles merged (slowest per model; since issue 14 only models whose profiles changed, so the
  first, cold epoch pays for all of them), planning rates (`RateMemory`), the autoscaler with the
  slots' phases (unless `--no-autoscale`), `decide_epoch` (coordinator/epoch.py) and checks.
- the pure parts on the same inputs, apart: merging every agent's profile into the slowest per
  model (CPU time, once: what a cold epoch pays; warm epochs re-merge only changed models),
  `decide_epoch`, `model_demand` for every model,
  `plan_assignment` (coordinator/placement.py) and its steps `place_models`, `delay_quotas`,
  `allocate_slots`, and `assignment_errors`.
Between epochs every member heartbeats again (rates jittered +-10%, log-normal), `--churn`
shards leave (their key deleted) and the ones that left an epoch earlier come back, and the
previous assignment is fed back as read from KV: sticky placement as in production.

Progress on stderr; results (and a cProfile of one more epoch at each size, untimed, top
functions by own time) in `<out>/results.json`, the curve in `<out>/coordinator_epoch.png`. The machine is shared:
`uptime` load is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from coordinator import core
from coordinator.demand import model_demand
from coordinator.epoch import EpochInputs, ModelSettings, assignment_errors, decide_epoch, model_configs
from coordinator.placement import PlacementConfig, allocate_slots, delay_quotas, place_models, plan_assignment
from schemas.autoscale import AutoscaleConfig
from schemas.control import AgentHeartbeat, AgentSlot, Assignment, ModelLoad, ShardHeartbeat
from schemas.profile import ModelProfile, profile_from_sleep_spec
from shard.core.config import CoreConfig

S = 1_000_000_000
EPOCH_NS = 5 * S
TIMING = core.CoordinatorTiming(epoch_ns=EPOCH_NS, lease_ns=3 * S, heartbeat_ttl_ns=3 * S)  # the live defaults
DEVICES = ("h100", "a100", "l4", "t4")
DEVICE_SHARES = (4, 3, 2, 1)
SLOTS_PER_AGENT = 8
SLOS_MS = (25, 50, 100, 200, 300, 500)
UTILIZATION = 0.6  # each class's demand as a share of its slots


@dataclass
class Cluster:
    """One synthetic cluster: what the coordinator is configured with and what members report."""

    models: list[ModelSettings]
    hosts_of: dict[str, list[str]]  # model -> device classes that run it
    agents: dict[str, AgentHeartbeat]
    profiles: dict[tuple[str, str], ModelProfile]  # (model, agent) -> measured profile
    rates: dict[str, float]  # base rate per model
    shard_ids: list[str]
    slot_ids: list[str] = field(default_factory=list)


def _device_of(k: int, total: int) -> str:
    """Agent k's class, so that the classes' shares of agents follow DEVICE_SHARES."""
    bounds = [total * sum(DEVICE_SHARES[: i + 1]) / sum(DEVICE_SHARES) for i in range(len(DEVICES))]
    return next(DEVICES[i] for i, bound in enumerate(bounds) if k < bound)


def build_cluster(shards: int, slots: int, models: int, rng: random.Random) -> Cluster:
    agent_count = max(len(DEVICES), math.ceil(slots / SLOTS_PER_AGENT))
    settings: list[ModelSettings] = []
    hosts_of: dict[str, list[str]] = {}
    for k in range(models):
        name = f"m{k:04d}"
        device = rng.choices(DEVICES, weights=DEVICE_SHARES)[0]
        classes = [device]
        if rng.random() < 0.15:  # also on the neighbouring class: a host class of its own
            classes.append(DEVICES[(DEVICES.index(device) + 1) % len(DEVICES)])
        slo_ms = rng.choice(SLOS_MS)
        batch_size_max = rng.choice((16, 32, 64))
        # A profile the SLO allows: a batch of 1 within a fifth of it.
        intercept_us = rng.uniform(1000, min(8000, slo_ms * 1000 / 5 - 100))
        slope_us = rng.uniform(100, 2000)
        settings.append(ModelSettings(name=name, slo_ms=slo_ms, kind=f"sleep:{slope_us:.0f},{intercept_us:.0f}",
                                      batch_size_max=batch_size_max))
        hosts_of[name] = sorted(classes)
    agents: dict[str, AgentHeartbeat] = {}
    profiles: dict[tuple[str, str], ModelProfile] = {}
    slot_ids: list[str] = []
    slots_left = slots
    for k in range(agent_count):
        device = _device_of(k, agent_count)
        agent = f"{device}-{k:03d}"
        count = min(SLOTS_PER_AGENT, slots_left) if k < agent_count - 1 else slots_left
        slots_left -= count
        names = [m.name for m in settings if device in hosts_of[m.name]]
        ids = [f"{agent}-gpu{j}" for j in range(count)]
        slot_ids += ids
        agents[agent] = AgentHeartbeat(agent_id=agent, device=device,
                                       slots=[AgentSlot(slot_id=s, models=names) for s in ids])
        for m in settings:
            if device in hosts_of[m.name]:
                slope, intercept = (float(x) for x in m.kind.split(":")[1].split(","))
                jitter = rng.uniform(0.95, 1.05)
                profiles[(m.name, agent)] = profile_from_sleep_spec(
                    f"sleep:{slope * jitter:.0f},{intercept * jitter:.0f}", m.batch_size_max)
    rates = _scaled_rates(settings, hosts_of, agents, rng)
    return Cluster(models=settings, hosts_of=hosts_of, agents=agents, profiles=profiles, rates=rates,
                   shard_ids=[f"shard-{k:03d}" for k in range(shards)], slot_ids=slot_ids)


def _scaled_rates(models: list[ModelSettings], hosts_of: dict[str, list[str]], agents: dict[str, AgentHeartbeat],
                  rng: random.Random) -> dict[str, float]:
    """Log-normal rates, scaled per device class so its demand is UTILIZATION of its slots."""
    raw = {m.name: rng.lognormvariate(math.log(300), 1.5) for m in models}
    configs = {c.name: c for c in model_configs(models, {})}
    slots_of = {d: sum(len(a.slots) for a in agents.values() if a.device == d) for d in DEVICES}
    rates: dict[str, float] = {}
    for device in DEVICES:
        members = [m.name for m in models if hosts_of[m.name][0] == device]
        demand = sum(model_demand(configs[n], raw[n], CoreConfig(), []).demand for n in members)
        scale = UTILIZATION * slots_of[device] / demand if demand > 0 else 1.0
        rates |= {n: raw[n] * scale for n in members}
    return rates


def shard_beats(cluster: Cluster, assignment: Assignment | None, live: list[str], rng: random.Random,
                ) -> dict[str, ShardHeartbeat]:
    """Every live shard's heartbeat: the rates of the models it was given (+-10%), its slots."""
    models: dict[str, dict[str, ModelLoad]] = {s: {} for s in live}
    placed = assignment.models if assignment is not None else {}
    for k, m in enumerate(cluster.models):
        shard = placed.get(m.name, live[k % len(live)])  # before any assignment: as a former leader left it
        if shard in models:
            rate = cluster.rates[m.name] * rng.lognormvariate(0.0, 0.1)
            models[shard][m.name] = ModelLoad(rate_rps=rate, pending=rng.randrange(64), recent_rps=rate)
    held: dict[str, list[str]] = {s: [] for s in live}
    for slot, shard in (assignment.slots.items() if assignment is not None else ()):
        if shard in held:
            held[shard].append(slot)
    epoch = assignment.epoch if assignment is not None else 0
    return {s: ShardHeartbeat(shard_id=s, models=models[s], epoch=epoch, busy_slots=len(held[s]) * UTILIZATION,
                              slots_held=held[s]) for s in live}


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter_ns()
    result = fn()
    return result, (time.perf_counter_ns() - start) / 1e6


def time_pure_parts(cluster: Cluster, inputs: EpochInputs, placement: PlacementConfig) -> dict[str, float]:
    """The pure functions of one epoch, each on the inputs the core had (milliseconds)."""
    config = CoreConfig()
    ms: dict[str, float] = {}
    _, ms["decide_epoch"] = _timed(lambda: decide_epoch(cluster.models, inputs, core=config, placement=placement,
                                                        coordinator_id="c0"))
    hosts = {slot.slot_id: frozenset(slot.models) for beat in inputs.agents.values() for slot in beat.slots}
    configs = model_configs(cluster.models, inputs.profiles)
    hosts_by_model: dict[str, list[str]] = {}
    for slot, names in sorted(hosts.items()):
        for name in names:
            hosts_by_model.setdefault(name, []).append(slot)
    demands, ms["model_demand"] = _timed(lambda: [model_demand(m, inputs.rates.get(m.name, 0.0), config,
                                                               hosts_by_model.get(m.name, [])) for m in configs])
    live = sorted(s for s, b in inputs.shards.items() if not b.draining and s not in inputs.drains)
    previous = inputs.previous
    slots = sorted(hosts)
    new, ms["plan_assignment"] = _timed(lambda: plan_assignment(previous, demands, live, slots, placement))
    placed, ms["place_models"] = _timed(lambda: place_models(previous.models if previous else {}, demands, live,
                                                             placement))
    by_name = {d.name: d for d in demands}
    busy = sorted(set(placed.values()))
    quota, ms["delay_quotas"] = _timed(lambda: delay_quotas(placed, by_name, busy, len(slots)))
    demand = {s: sum(by_name[m].demand for m, owner in placed.items() if owner == s) for s in live}
    _, ms["allocate_slots"] = _timed(lambda: allocate_slots(previous.slots if previous else {}, placed, by_name,
                                                            demand, slots, quota))
    _, ms["assignment_errors"] = _timed(lambda: assignment_errors(new, live, hosts, [m.name for m in cluster.models]))
    return ms


class Driver:
    """One coordinator core, fed heartbeats and KV answers as the live service would."""

    def __init__(self, cluster: Cluster, autoscale: bool, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.now_ns = 0
        self.revision = 0
        self.core = core.CoordinatorCore(
            "c0", cluster.models, TIMING, core=CoreConfig(), placement=PlacementConfig(), now_ns=0,
            autoscale=AutoscaleConfig() if autoscale else None, slots=cluster.slot_ids)
        for (model, agent), profile in sorted(cluster.profiles.items()):
            self.core.handle(core.ProfileUpdate(model=model, agent=agent, profile=profile), 0)
        self.live = list(cluster.shard_ids)
        self.left: list[str] = []
        self.assignment: Assignment | None = None
        self.beats: dict[str, ShardHeartbeat] = {}
        # The slowest profile per model (they never change here), merged as the core merges them
        # (coordinator/core.py `_inputs`; all at the first epoch, then only changed models): timed.
        start = time.process_time_ns()
        self.merged: dict[str, ModelProfile] = {}
        for (model, _agent), profile in sorted(cluster.profiles.items()):
            have = self.merged.get(model)
            self.merged[model] = profile if have is None else have.merge_slowest(profile)
        self.profile_merge_ms = (time.process_time_ns() - start) / 1e6

    def _deliver(self, key: str, beat: ShardHeartbeat | AgentHeartbeat | None) -> None:
        self.revision += 1
        self.core.handle(core.MemberUpdate(key=key, heartbeat=beat, revision=self.revision), self.now_ns)

    def heartbeats(self, churn: int) -> float:
        """Shards that left last epoch return, `churn` others leave; everyone heartbeats. Returns ms."""
        start = time.perf_counter_ns()
        back, self.left = self.left, []
        if churn and len(self.live) > churn + 1:
            self.left = self.rng.sample(sorted(self.live), churn)
            for shard in self.left:
                self._deliver(f"shard.{shard}", None)
        self.live = sorted((set(self.live) - set(self.left)) | set(back))
        self.beats = shard_beats(self.cluster, self.assignment, self.live, self.rng)
        for shard, beat in self.beats.items():
            self._deliver(f"shard.{shard}", beat)
        for agent, beat in self.cluster.agents.items():
            self._deliver(f"agent.{agent}", beat)
        return (time.perf_counter_ns() - start) / 1e6

    def tick(self) -> list:
        commands = self.core.handle(core.Tick(), self.now_ns)
        if any(isinstance(c, (core.TakeLease, core.RenewLease)) for c in commands):
            self.core.handle(core.LeaseResult(outcome=core.LeaseOutcome.HELD, revision=7), self.now_ns)
            commands += self.core.handle(core.Tick(), self.now_ns)
        return commands

    def epoch(self, profiler: cProfile.Profile | None = None) -> dict:
        """One epoch: the decision timed; the assignment written back, as KV would."""
        commands = self.tick()
        assert any(isinstance(c, core.ReadAssignment) for c in commands), "the core started no epoch"
        read = core.AssignmentRead(assignment=self.assignment, revision=self.revision)
        if profiler is not None:
            profiler.enable()
        start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
        commands = self.core.handle(read, self.now_ns)
        elapsed_ms = (time.perf_counter_ns() - start) / 1e6
        cpu_ms = (time.process_time_ns() - cpu_start) / 1e6
        if profiler is not None:
            profiler.disable()
        writes = [c for c in commands if isinstance(c, core.WriteAssignment)]
        moved = 0
        if writes:
            new = writes[0].assignment
            if self.assignment is not None:
                moved = sum(1 for m, s in new.models.items() if self.assignment.models.get(m) != s)
            self.core.handle(core.AssignmentWritten(outcome=core.WriteOutcome.WRITTEN), self.now_ns)
            self.assignment = new
        notes = [c.event for c in commands if isinstance(c, core.Note)]
        return {"ms": elapsed_ms, "cpu_ms": cpu_ms, "written": bool(writes), "models_moved": moved, "notes": notes}

    def inputs(self) -> EpochInputs:
        """What the core decided from, rebuilt from public parts, for timing the pure functions."""
        rates: dict[str, float] = {}
        for beat in self.beats.values():
            for name, load in beat.models.items():
                rates[name] = max(rates.get(name, 0.0), load.rate_rps)
        return EpochInputs(shards=self.beats, agents=self.cluster.agents, drains=frozenset(),
                           previous=self.assignment, rates=rates, profiles=self.merged)


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median": statistics.median(ordered), "p99": p99, "max": ordered[-1], "min": ordered[0]}


def _top_functions(profiler: cProfile.Profile, count: int = 12) -> list[dict]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (path, line, name), (_cc, calls, own_s, cum_s, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(path).name}:{line}({name})", "calls": calls, "own_ms": own_s * 1e3,
                     "cum_ms": cum_s * 1e3})
    return sorted(rows, key=lambda r: -r["own_ms"])[:count]


def run_size(shards: int, slots: int, models: int, epochs: int, churn: int, autoscale: bool, seed: int) -> dict:
    rng = random.Random(seed)
    started = time.perf_counter()
    cluster = build_cluster(shards, slots, models, rng)
    driver = Driver(cluster, autoscale, rng)
    driver.heartbeats(0)
    driver.now_ns = TIMING.heartbeat_ttl_ns  # the view is warm a TTL after the watch started
    cold = driver.epoch()
    tag = f"[{shards}/{slots}/{models}]"
    print(f"{tag} built in {time.perf_counter() - started:.1f} s; cold epoch {cold['ms']:.1f} ms", file=sys.stderr,
          flush=True)
    warm: list[dict] = []
    heartbeat_ms: list[float] = []
    parts: dict[str, list[float]] = {}
    profiler = cProfile.Profile()
    for k in range(epochs):
        driver.now_ns += EPOCH_NS
        heartbeat_ms.append(driver.heartbeats(churn))
        warm.append(driver.epoch())
        for name, ms in time_pure_parts(cluster, driver.inputs(), PlacementConfig()).items():
            parts.setdefault(name, []).append(ms)
        if (k + 1) % 5 == 0 or k + 1 == epochs:
            last = [e["ms"] for e in warm[-5:]]
            print(f"{tag} epoch {k + 1}/{epochs}: core epoch {statistics.median(last):.1f} ms (median of last "
                  f"{len(last)})", file=sys.stderr, flush=True)
    driver.now_ns += EPOCH_NS  # one more epoch under cProfile, left out of the timings (it slows them ~3x)
    driver.heartbeats(churn)
    driver.epoch(profiler)
    times = [e["ms"] for e in warm]
    return {
        "shards": shards, "slots": slots, "models": models, "agents": len(cluster.agents),
        "host_classes": len({tuple(v) for v in cluster.hosts_of.values()}),
        "profiles": len(cluster.profiles), "total_rate_rps": sum(cluster.rates.values()),
        "epochs": epochs, "churn": churn, "autoscale": autoscale, "seed": seed,
        "cold_epoch_ms": cold["ms"], "cold_epoch_cpu_ms": cold["cpu_ms"], "core_epoch_ms": _quantiles(times),
        "core_epoch_cpu_ms": _quantiles([e["cpu_ms"] for e in warm]),
        "parts_ms": {name: _quantiles(values) for name, values in parts.items()},
        "heartbeat_intake_ms": _quantiles(heartbeat_ms), "profile_merge_cpu_ms": driver.profile_merge_ms,
        "written": sum(e["written"] for e in warm), "models_moved_median": statistics.median(
            e["models_moved"] for e in warm),
        "notes": sorted({n for e in warm for n in e["notes"]}),
        "assignment_json_bytes": len(msgspec.json.encode(driver.assignment)) if driver.assignment else 0,
        "profile_top_own_time": _top_functions(profiler),
    }


def plot(rows: list[dict], path: Path) -> None:
    from load.plots import finish, plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    slots = [r["slots"] for r in rows]
    ax.plot(slots, [r["core_epoch_ms"]["median"] for r in rows], "o-", label="core epoch, median")
    ax.plot(slots, [r["core_epoch_ms"]["p99"] for r in rows], "o--", label="core epoch, p99")
    ax.plot(slots, [r["core_epoch_cpu_ms"]["median"] for r in rows], "s-", label="core epoch CPU time, median")
    for name in ("plan_assignment", "delay_quotas", "place_models", "allocate_slots", "model_demand"):
        ax.plot(slots, [r["parts_ms"][name]["median"] for r in rows], ".:", label=f"{name}, median")
    ax.axhline(EPOCH_NS / 1e6, color="k", linewidth=0.8, label="epoch (5 s)")
    # The decision runs inline in the coordinator's event loop, which renews the 3 s lease every
    # second: a decision much over 2 s lets the lease lapse.
    ax.axhline(TIMING.lease_ns / 1e6, color="r", linewidth=0.8, label="lease (3 s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(slots, [f"{r['shards']}/{r['slots']}/{r['models']}" for r in rows])
    ax.set_xlabel("shards / slots / models")
    ax.set_ylabel("ms per epoch")
    ax.set_title("Coordinator epoch decision (one core, 2 shared vCPUs)", fontsize=10)
    finish(fig, path, ax, legend={"loc": "upper left"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10/100/50,30/300/150,100/1000/500,200/2000/1000",
                        help="shards/slots/models, comma-separated")
    parser.add_argument("--epochs", type=int, default=20, help="warm epochs per size (after the cold one)")
    parser.add_argument("--churn", type=int, default=2, help="shards that leave each epoch (back the next)")
    parser.add_argument("--no-autoscale", action="store_true", help="run the core without its autoscaler")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="results/bench-coordinator-epoch")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        shards, slots, models = (int(x) for x in size.split("/"))
        rows.append(run_size(shards, slots, models, args.epochs, args.churn, not args.no_autoscale, args.seed))
    results = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
               "epoch_s": EPOCH_NS / S, "sizes": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(rows, out / "coordinator_epoch.png")
    print(f"{'shards/slots/models':>20} {'core median':>12} {'p99':>9} {'cpu median':>10} {'cold':>9} "
          f"{'plan_assignment':>16} "
          f"{'delay_quotas':>13} {'place_models':>13} {'allocate':>9} {'of epoch':>9}")
    for r in rows:
        p = r["parts_ms"]
        print(f"{r['shards']:>6}/{r['slots']}/{r['models']:<8} {r['core_epoch_ms']['median']:>10.1f}ms "
              f"{r['core_epoch_ms']['p99']:>7.1f}ms {r['core_epoch_cpu_ms']['median']:>8.1f}ms "
              f"{r['cold_epoch_ms']:>7.1f}ms "
              f"{p['plan_assignment']['median']:>14.1f}ms "
              f"{p['delay_quotas']['median']:>11.1f}ms {p['place_models']['median']:>11.1f}ms "
              f"{p['allocate_slots']['median']:>7.1f}ms {r['core_epoch_ms']['p99'] / (EPOCH_NS / 1e6):>8.2%}")
    print(f"load average {results['load_average'][0]:.2f} on {results['cpus']} CPUs; {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
