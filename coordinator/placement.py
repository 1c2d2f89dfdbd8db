"""The coordinator's epoch math: place models on shards, allocate slots to shards, and compute
the load-proportional signal (desired and surplus slots). Pure: no I/O, no clocks.

Demand is predicted slot time per second: rate x per-request cost at the target batch (from the
profile). Placement is sticky (a model stays with its live shard) and balances demand across
shards within a tolerance, moving as few models as it can. A shard's models must share slots
that host all of them (the shard's core treats its slots as interchangeable). Slot quotas keep
the expected number of late requests lowest (each shard an M/M/c queue of batches, Erlang C;
or, on request, plain shares of demand), at least one per shard with models; current owners
keep their slots where the quota allows.

Mixed fleets (issue 16): demand is in reference slot-seconds (on the slowest profile), and each
slot has a weight, the reference slots it is worth (coordinator/epoch.py `slot_weights`). Quotas
are then in reference slots, a shard fills its quota by summed weight, and desired slots are the
fewest, fastest first, whose weights cover the demand. Without weights (every slot worth one)
each of these is today's integer arithmetic, decision for decision.
"""

from __future__ import annotations

import heapq
import math

import msgspec

from schemas.control import Assignment


class ModelDemand(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    rate_rps: float
    cost_s: float  # slot-seconds per request at the target batch
    hosts: list[str]  # slots that can run this model
    slo_s: float = 0.0  # models of similar SLO share shards: a long batch blocks a tight model's window
    batch_s: float = 0.0  # execution time of one batch at the target batch (0: unknown)

    @property
    def demand(self) -> float:
        """Slots this model keeps busy; a model without traffic yet still counts a little."""
        return max(self.rate_rps, 1.0) * self.cost_s


class PlacementConfig(msgspec.Struct, frozen=True, kw_only=True):
    imbalance: float = 0.25  # rebalance while the busiest shard exceeds the mean by this
    moves_max: int = 4  # models moved per epoch at most (stickiness)
    target_utilization: float = 0.8  # desired slots = demand / this
    quotas: str = "delay"  # slot quotas: "delay" (fewest expected late requests) or "demand" (proportional)
    # Issue 14: a model arriving faster than this is split over ceil(rate / this) shards (0: never
    # split); a split shrinks once the rate would fit one shard fewer at `merge_fill` of this.
    shard_rps_max: float = 0.0
    merge_fill: float = 0.8


PIECE_SEP = "~"  # a split model's pieces are "m", "m~1", "m~2", ...: "~" is not in any model name


def piece_names(model: str, count: int) -> list[str]:
    """The names placement gives a model split `count` ways; piece 0 is the model itself."""
    return [model] + [f"{model}{PIECE_SEP}{i}" for i in range(1, count)]


def base_model(piece: str) -> str:
    return piece.split(PIECE_SEP, 1)[0]


def split_counts(previous: Assignment | None, rates: dict[str, float], host_counts: dict[str, int],
                 shard_count: int, config: PlacementConfig) -> dict[str, int]:
    """How many shards serve each model: one, unless its rate exceeds `shard_rps_max`; then
    enough that each takes at most that, never more than the live shards or the slots that host
    it. Hysteresis: a split grows at once and shrinks only when the rate fits one shard fewer
    at `merge_fill` of the budget, so a rate near the budget does not split and merge by turns."""
    counts = {}
    for model, hosts in host_counts.items():
        cap = max(1, min(shard_count, hosts))
        if config.shard_rps_max <= 0 or cap == 1:
            counts[model] = 1
            continue
        rate = rates.get(model, 0.0)
        now = len(previous.shards_of(model)) if previous is not None else 1
        grow_to = math.ceil(rate / config.shard_rps_max - 1e-9)
        shrink_to = math.ceil(rate / (config.shard_rps_max * config.merge_fill) - 1e-9)
        wanted = grow_to if now < grow_to else min(now, shrink_to)
        counts[model] = max(1, min(cap, wanted))
    return counts


def pieces_of(previous: Assignment | None) -> dict[str, str]:
    """The previous assignment as piece -> shard, the basis for sticky placement of pieces."""
    if previous is None:
        return {}
    placed = dict(previous.models)
    for model, shards in previous.splits.items():
        placed.update(zip(piece_names(model, len(shards)), shards, strict=True))
    return placed


def merge_pieces(placement: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """piece -> shard back to model -> shard (piece 0's) and the splits: every shard serving a
    model in piece order, for models on two or more (pieces that met on one shard count once)."""
    shards_of: dict[str, list[str]] = {}
    for piece in sorted(placement, key=lambda p: (base_model(p), _piece_index(p))):
        shards = shards_of.setdefault(base_model(piece), [])
        if placement[piece] not in shards:
            shards.append(placement[piece])
    models = {model: shards[0] for model, shards in shards_of.items()}
    return models, {model: shards for model, shards in shards_of.items() if len(shards) > 1}


def _piece_index(piece: str) -> int:
    _, _, index = piece.partition(PIECE_SEP)
    return int(index) if index else 0


def plan_assignment(
    previous: Assignment | None, models: list[ModelDemand], shards: list[str], slots: list[str],
    config: PlacementConfig = PlacementConfig(), weights: dict[str, float] | None = None,
) -> Assignment:
    """`weights`: slot -> reference slots it is worth (None: one each, a homogeneous fleet)."""
    shards = sorted(shards)
    epoch = (previous.epoch if previous else 0) + 1
    if not shards:
        return Assignment(epoch=epoch, desired_slots=_desired(models, config, slots, weights), surplus_slots=0)
    placement = place_models(pieces_of(previous), models, shards, config)
    demand = {s: 0.0 for s in shards}
    by_name = {m.name: m for m in models}
    for model, shard in placement.items():
        demand[shard] += by_name[model].demand
    busy = sorted(set(placement.values()))
    capacity = len(slots) if weights is None else max(1, round(sum(weights.get(s, 1.0) for s in slots)))
    quota = (delay_quotas(placement, by_name, busy, capacity) if config.quotas == "delay"
             else _quotas(demand, busy, capacity))
    owners = allocate_slots(previous.slots if previous else {}, placement, by_name, demand, slots, quota, weights)
    desired = _desired(models, config, slots, weights)
    model_shards, splits = merge_pieces(placement)
    return Assignment(
        epoch=epoch, models=model_shards, slots=owners, demand=demand, desired_slots=desired,
        surplus_slots=max(0, len(slots) - desired), splits=splits,
    )


def _desired(models: list[ModelDemand], config: PlacementConfig, slots: list[str],
             weights: dict[str, float] | None) -> int:
    total = sum(m.rate_rps * m.cost_s for m in models)
    if total <= 0:
        return 0
    if weights is None:
        return math.ceil(total / config.target_utilization - 1e-9)
    # Fastest first, as `rank_slots` orders them; which of equal slots comes first changes no count.
    return weighted_count(total / config.target_utilization, sorted((weights.get(s, 1.0) for s in slots), reverse=True))


def rank_slots(ranked: list[str], weights: dict[str, float]) -> list[str]:
    """`ranked` (preference order) with the slots worth more first, so that the fast slots are
    the ones kept busy and the slow ones the ones let go; equal weights keep `ranked` as it is."""
    if not weights:
        return list(ranked)
    return sorted(ranked, key=lambda s: -weights.get(s, 1.0))


def weighted_count(need: float, weights: list[float]) -> int:
    """The fewest of the first slots whose weights sum to `need` reference slots; past the end
    of `weights`, slots worth one each (slots that do not exist yet count as reference ones).
    With every weight 1.0 this is ceil(need), the same integer a homogeneous fleet computes."""
    covered = 0.0
    for count, weight in enumerate(weights):
        if covered >= need - 1e-9:
            return count
        covered += weight
    return len(weights) + max(0, math.ceil(need - covered - 1e-9))


def _common_hosts(members: list[ModelDemand]) -> set[str] | None:
    """Slots that host every model in `members` (None: no constraint yet)."""
    hosts: set[str] | None = None
    for m in members:
        hosts = set(m.hosts) if hosts is None else hosts & set(m.hosts)
    return hosts


def place_models(
    previous: dict[str, str], models: list[ModelDemand], shards: list[str], config: PlacementConfig,
) -> dict[str, str]:
    """Host classes first (models that the same slots host), then, within each class's shards,
    sticky placement balanced by demand and grouped by SLO."""
    classes: dict[tuple[str, ...], list[ModelDemand]] = {}
    for model in models:
        classes.setdefault(tuple(sorted(model.hosts)), []).append(model)
    shards_of = _shards_per_class(previous, classes, shards)
    placement: dict[str, str] = {}
    for key, members_of_class in classes.items():
        placement.update(_place_class(previous, members_of_class, shards_of[key], config))
    return placement


def _shards_per_class(previous: dict[str, str], classes: dict[tuple[str, ...], list[ModelDemand]],
                      shards: list[str]) -> dict[tuple[str, ...], list[str]]:
    """Give every host class its own shards, in proportion to its demand (at least one each;
    with fewer shards than classes, classes share and some models get no slot). A shard keeps
    the class most of its previous models belonged to."""
    keys = sorted(classes, key=lambda k: (-sum(m.demand for m in classes[k]), k))
    class_of_model = {m.name: k for k in keys for m in classes[k]}
    votes: dict[str, dict[tuple[str, ...], int]] = {}
    for model, shard in previous.items():
        if shard in shards and model in class_of_model:
            votes.setdefault(shard, {}).setdefault(class_of_model[model], 0)
            votes[shard][class_of_model[model]] += 1
    if len(shards) <= len(keys):
        result = {k: [] for k in keys}
        free = list(shards)
        for shard in sorted(votes):  # sticky: a shard keeps its class
            best = max(votes[shard], key=lambda k: (votes[shard][k], k))
            if not result[best]:
                result[best].append(shard)
                free.remove(shard)
        for i, k in enumerate(k for k in keys if not result[k]):
            result[k].append(free.pop(0) if free else shards[i % len(shards)])
        return result
    demand = {k: sum(m.demand for m in classes[k]) for k in keys}
    counts = {k: 1 for k in keys}
    total = sum(demand.values()) or 1.0
    spare = len(shards) - len(keys)
    exact = {k: spare * demand[k] / total for k in keys}
    for k in keys:
        counts[k] += int(exact[k])
    left = spare - sum(int(v) for v in exact.values())
    for k in sorted(keys, key=lambda k: (-(exact[k] - int(exact[k])), k))[:left]:
        counts[k] += 1
    result: dict[tuple[str, ...], list[str]] = {k: [] for k in keys}
    free = list(shards)
    for shard in sorted(votes):  # sticky: a shard stays with its class while the class needs shards
        best = max(votes[shard], key=lambda k: (votes[shard][k], k))
        if len(result[best]) < counts[best]:
            result[best].append(shard)
            free.remove(shard)
    for k in keys:
        while len(result[k]) < counts[k] and free:
            result[k].append(free.pop(0))
    return result


def _place_class(previous: dict[str, str], models: list[ModelDemand], shards: list[str],
                 config: PlacementConfig) -> dict[str, str]:
    live = set(shards)
    members: dict[str, list[ModelDemand]] = {s: [] for s in shards}
    load = {s: 0.0 for s in shards}
    unplaced: list[ModelDemand] = []
    for model in sorted(models, key=lambda m: m.name):
        shard = previous.get(model.name)
        if shard in live:
            members[shard].append(model)
            load[shard] += model.demand
        else:
            unplaced.append(model)
    if not any(members.values()):
        _place_by_slo(unplaced, members, load, shards)
    else:
        for model in sorted(unplaced, key=lambda m: (-m.demand, m.name)):
            least = min(load.values())
            # Among shards within 25% of the least loaded, join the one with the closest SLOs.
            near = [s for s in shards if load[s] <= least * 1.25 + 1e-12]
            apart = [s for s in near if _fits(members[s], model)] or [
                s for s in shards if _fits(members[s], model)] or near  # a split's pieces on distinct shards
            shard = min(apart, key=lambda s: (_slo_distance(members[s], model), load[s], s))
            members[shard].append(model)
            load[shard] += model.demand
    _rebalance(members, load, shards, config)
    return {m.name: shard for shard in shards for m in members[shard]}


def _slo_distance(members: list[ModelDemand], model: ModelDemand) -> float:
    if not members:
        return 0.0
    return min(abs(m.slo_s - model.slo_s) for m in members)


def _place_by_slo(models: list[ModelDemand], members: dict[str, list[ModelDemand]], load: dict[str, float],
                  shards: list[str]) -> None:
    """A fresh placement: models in SLO order, cut into shards of about equal demand, so each
    shard's pool serves models whose batches fit each other's windows."""
    ordered = sorted(models, key=lambda m: (m.slo_s, m.cost_s, m.name))
    total = sum(m.demand for m in ordered) or 1.0
    share = total / len(shards)
    index = 0
    for model in ordered:
        while index < len(shards) - 1 and load[shards[index]] >= share * 0.999:
            index += 1
        shard = shards[index]
        if not _fits(members[shard], model):  # the nearest in SLO order that fits (a split's pieces)
            nearest = sorted(range(len(shards)), key=lambda i: (abs(i - index), i < index))
            shard = next((shards[i] for i in nearest if _fits(members[shards[i]], model)), shard)
        members[shard].append(model)
        load[shard] += model.demand


def _fits(members: list[ModelDemand], model: ModelDemand) -> bool:
    """Slots host every member and `model`, and no member is a piece of the same split model."""
    base = base_model(model.name)
    if any(base_model(m.name) == base for m in members):
        return False
    hosts = _common_hosts([*members, model])
    return bool(hosts)


def _rebalance(members: dict[str, list[ModelDemand]], load: dict[str, float], shards: list[str],
               config: PlacementConfig) -> None:
    """Move models from the busiest shard to the least busy while that lowers the maximum."""
    total = sum(load.values())
    if total <= 0:
        return
    mean = total / len(shards)
    for _ in range(config.moves_max):
        heavy = max(shards, key=lambda s: (load[s], s))
        if load[heavy] <= (1 + config.imbalance) * mean or len(members[heavy]) <= 1:
            return
        best: tuple[float, ModelDemand, str] | None = None
        for model in members[heavy]:
            for light in shards:
                if light == heavy or not _fits(members[light], model):
                    continue
                new_max = max(load[heavy] - model.demand, load[light] + model.demand)
                if new_max < load[heavy] - 1e-12 and (best is None or new_max < best[0]):
                    best = (new_max, model, light)
        if best is None:
            return
        _new_max, model, light = best
        members[heavy].remove(model)
        members[light].append(model)
        load[heavy] -= model.demand
        load[light] += model.demand


def allocate_slots(
    previous: dict[str, str], placement: dict[str, str], models: dict[str, ModelDemand],
    demand: dict[str, float], slots: list[str], quota: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
) -> dict[str, str]:
    """Every slot to a shard whose models it hosts, up to each shard's quota (default: in
    proportion to demand); what no quota takes goes where demand per slot is highest. A quota
    counts the slots' `weights` (reference slots; None: one each), so a shard whose quota is two
    is full with one slot twice as fast; with weights of one the sums are exact integers."""
    busy_shards = sorted({s for s in placement.values()})
    if not busy_shards or not slots:
        return {}
    members = _members_of(placement, models, busy_shards)
    known = set(slots)
    eligible = {shard: (_common_hosts(members[shard]) or set()) & known for shard in busy_shards}
    quota = quota or _quotas(demand, busy_shards, len(slots))
    owners: dict[str, str] = {}
    weight = weights or {}
    count = {s: 0.0 for s in busy_shards}  # the weight each shard holds
    # 1. keep current owners while within quota
    for slot in sorted(slots):
        shard = previous.get(slot)
        if shard in eligible and slot in eligible[shard] and count[shard] < quota[shard] - 1e-9:
            owners[slot] = shard
            count[shard] += weight.get(slot, 1.0)
    # 2. fill quotas, most constrained shards first, from slots few others could use
    sharers = _sharers(eligible, busy_shards, slots)
    demand_of = {slot: len(sharers[slot]) for slot in slots}
    for shard in sorted(busy_shards, key=lambda s: (len(eligible[s]), s)):
        free = sorted((s for s in eligible[shard] if s not in owners), key=lambda s: (demand_of[s], s))
        for slot in free:
            if count[shard] >= quota[shard] - 1e-9:
                break
            owners[slot] = shard
            count[shard] += weight.get(slot, 1.0)
    # 3. what is left goes where it is most needed per slot already held
    for slot in sorted(s for s in slots if s not in owners):
        candidates = sharers[slot]
        if candidates:
            shard = max(candidates, key=lambda s: (demand[s] / (count[s] + weight.get(slot, 1.0)), s))
            owners[slot] = shard
            count[shard] += weight.get(slot, 1.0)
    return owners


def _sharers(eligible: dict[str, set[str]], shards: list[str], slots: list[str]) -> dict[str, list[str]]:
    """slot -> the shards (in `shards` order) it is eligible for: `eligible` inverted once
    rather than every shard asked about every slot."""
    sharers: dict[str, list[str]] = {slot: [] for slot in slots}
    for shard in shards:
        for slot in eligible[shard]:
            sharers[slot].append(shard)
    return sharers


def _quotas(demand: dict[str, float], shards: list[str], slots: int) -> dict[str, int]:
    """Largest-remainder shares of `slots` by demand, at least one each."""
    quota = {s: 1 for s in shards}
    spare = slots - len(shards)
    if spare <= 0:
        return quota
    total = sum(demand[s] for s in shards) or 1.0
    exact = {s: spare * demand[s] / total for s in shards}
    for s in shards:
        quota[s] += int(exact[s])
    left = spare - sum(int(exact[s]) for s in shards)
    for s in sorted(shards, key=lambda s: (-(exact[s] - int(exact[s])), s))[:left]:
        quota[s] += 1
    return quota


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with `load` erlangs offered."""
    if load <= 0:
        return 0.0
    if load >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):  # Erlang B by its recurrence, stable for any c
        blocking = load * blocking / (k + load * blocking)
    return servers * blocking / (servers - load * (1 - blocking))


def late_rate(members: list[ModelDemand], servers: int) -> float:
    """Requests per second expected to miss their SLO waiting for a slot: a due batch waits for
    the next free slot (M/M/c with the shard's batches as jobs), and is late when the wait is
    longer than what its SLO leaves after execution."""
    load = sum(m.demand for m in members)
    batches_per_s = sum(m.demand / m.batch_s for m in members if m.batch_s > 0)
    if load <= 0 or batches_per_s <= 0:
        return 0.0
    if load >= servers:
        return sum(max(m.rate_rps, 1.0) for m in members)
    mean_batch_s = load / batches_per_s
    waits = erlang_c(servers, load)
    decay = (servers - load) / mean_batch_s
    return sum(max(m.rate_rps, 1.0) * waits * math.exp(-decay * max(0.0, m.slo_s - m.batch_s)) for m in members)


def _members_of(placement: dict[str, str], models: dict[str, ModelDemand],
                shards: list[str]) -> dict[str, list[ModelDemand]]:
    """Each shard's models in placement order: `placement` inverted in one pass instead of
    scanned once per shard. Owners not in `shards` are left out."""
    members: dict[str, list[ModelDemand]] = {s: [] for s in shards}
    for model, owner in placement.items():
        if owner in members:
            members[owner].append(models[model])
    return members


def delay_quotas(placement: dict[str, str], models: dict[str, ModelDemand], shards: list[str],
                 slots: int) -> dict[str, int]:
    """Slot quotas that minimise the expected late requests across shards: each slot in turn
    goes to the shard where it saves the most. Proportional shares ignore that a pool of tight
    SLOs needs more idle headroom than one of loose SLOs at the same demand."""
    members = _members_of(placement, models, shards)
    # Each shard's demand summed once (in member order, as before): the greedy steps below ask
    # for it at every step, and summing it there cost O(slots x models).
    total = {s: sum(m.demand for m in members[s]) for s in shards}
    # Start each shard at the fewest slots that keep up with its demand: below that everything
    # is late and one more slot saves nothing, so the greedy steps below would not see the need.
    quota = {s: max(1, math.floor(total[s]) + 1) for s in shards}
    if sum(quota.values()) > slots:
        return _quotas(total, shards, slots)
    late = {s: late_rate(members[s], quota[s]) for s in shards}
    after = {s: late_rate(members[s], quota[s] + 1) for s in shards}  # only the chosen shard's changes
    _grant_slots(shards, members, total, quota, (late, after), slots - sum(quota.values()))
    return quota


def _grant_slots(shards: list[str], members: dict[str, list[ModelDemand]], total: dict[str, float],
                 quota: dict[str, int], rates: tuple[dict[str, float], dict[str, float]], steps: int) -> None:
    """Each of `steps` slots to the shard where it saves the most late requests (`rates`: late
    at the quota and at one more), ties to the higher demand per slot, then the later name;
    `quota` and `rates` updated in place. A heap on exactly that order picks what a scan of
    every shard picks, as only the chosen shard's key changes, where a scan at every step cost
    O(slots x shards). NaN has no order a heap could keep: from the first one on, the scan decides."""
    late, after = rates

    def key(s: str) -> tuple[float, float, str]:
        return late[s] - after[s], total[s] / quota[s], s

    def nan(k: tuple[float, float, str]) -> bool:
        return k[0] != k[0] or k[1] != k[1]

    rank = {s: i for i, s in enumerate(sorted(set(shards)))}  # the name's tie-break, as a number
    scan = any(nan(key(s)) for s in rank)
    heap = [] if scan else [(-gain, -ratio, -rank[s], s) for s in rank for gain, ratio, _ in [key(s)]]
    heapq.heapify(heap)
    for _ in range(steps):
        best = max(shards, key=key) if scan else heapq.heappop(heap)[3]
        quota[best] += 1
        late[best], after[best] = after[best], late_rate(members[best], quota[best] + 1)
        gain, ratio, _ = k = key(best)
        scan = scan or nan(k)
        if not scan:
            heapq.heappush(heap, (-gain, -ratio, -rank[best], best))
