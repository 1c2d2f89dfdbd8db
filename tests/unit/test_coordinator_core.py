"""The coordinator's decisions (coordinator/core.py), driven only through `handle()` with
explicit time: leadership by lease, epochs that wait for a warm view, that are never written
empty, that keep models where they are, and writes by compare-and-swap."""

from coordinator.core import (
    AssignmentRead,
    AssignmentWritten,
    CoordinatorCore,
    CoordinatorTiming,
    LeaseOutcome,
    LeaseResult,
    MemberRead,
    MemberUpdate,
    Note,
    ReadAssignment,
    ReadMember,
    RenewLease,
    RestartWatches,
    TakeLease,
    Tick,
    WriteAssignment,
    WriteOutcome,
)
from coordinator.epoch import ModelSettings
from coordinator.membership import ReadOutcome
from coordinator.placement import PlacementConfig
from schemas.control import AgentHeartbeat, AgentSlot, Assignment, ModelLoad, ShardHeartbeat
from shard.core.config import CoreConfig

S = 1_000_000_000
TIMING = CoordinatorTiming(epoch_ns=5 * S, lease_ns=3 * S, heartbeat_ttl_ns=3 * S)
MODELS = [ModelSettings(name="jax_model", slo_ms=100, kind="sleep:500,2000", batch_size_max=32),
          ModelSettings(name="sleep_model", slo_ms=100, kind="sleep:1082,5204", batch_size_max=64)]
AGENTS = {"jax": ["j0", "j1"], "sleep": ["s0", "s1"]}


def core(now_ns: int = 0) -> CoordinatorCore:
    return CoordinatorCore("c0", MODELS, TIMING, core=CoreConfig(), placement=PlacementConfig(), now_ns=now_ns)


def of(commands: list, kind: type) -> list:
    return [c for c in commands if isinstance(c, kind)]


def notes(commands: list) -> list[str]:
    return [c.event for c in of(commands, Note)]


def join(c: CoordinatorCore, now_ns: int, shards=("shard-0", "shard-1"), revision: int = 1) -> None:  # noqa: ANN001
    for shard in shards:
        beat = ShardHeartbeat(shard_id=shard, models={})
        c.handle(MemberUpdate(key=f"shard.{shard}", heartbeat=beat, revision=revision), now_ns)
    for agent, slots in AGENTS.items():
        model = "jax_model" if agent == "jax" else "sleep_model"
        beat = AgentHeartbeat(agent_id=agent, device="cpu", slots=[AgentSlot(slot_id=s, models=[model]) for s in slots])
        c.handle(MemberUpdate(key=f"agent.{agent}", heartbeat=beat, revision=revision), now_ns)


def tick(c: CoordinatorCore, now_ns: int) -> list:
    """A tick whose lease writes (if any) succeed at once."""
    commands = c.handle(Tick(), now_ns)
    if of(commands, TakeLease) or of(commands, RenewLease):
        c.handle(LeaseResult(outcome=LeaseOutcome.HELD, revision=7), now_ns)
        commands += c.handle(Tick(), now_ns)
    return commands


def lead(c: CoordinatorCore, now_ns: int) -> list:
    """Take the lease; returns the commands of the tick after."""
    commands = c.handle(Tick(), now_ns)
    assert of(commands, TakeLease)
    c.handle(LeaseResult(outcome=LeaseOutcome.HELD, revision=7), now_ns)
    return c.handle(Tick(), now_ns)


def epoch(c: CoordinatorCore, now_ns: int, previous: Assignment | None, revision: int = 0) -> Assignment | None:
    """Run one epoch if the core starts one; returns what it wrote (and tells it the write worked)."""
    commands = tick(c, now_ns)
    if not of(commands, ReadAssignment):
        return None
    commands = c.handle(AssignmentRead(assignment=previous, revision=revision), now_ns)
    writes = of(commands, WriteAssignment)
    if not writes:
        return None
    c.handle(AssignmentWritten(outcome=WriteOutcome.WRITTEN), now_ns)
    return writes[0].assignment


def test_a_new_leader_writes_nothing_before_its_view_has_watched_for_a_ttl() -> None:
    c = core()
    join(c, 0)
    assert not of(lead(c, S), ReadAssignment), "the view is not warm yet: a member may be missing"
    first = epoch(c, TIMING.heartbeat_ttl_ns, None)
    assert first is not None and first.epoch == 1
    assert set(first.models) == {"jax_model", "sleep_model"}
    assert first.models["jax_model"] != first.models["sleep_model"], "the two host classes need two shards"


def test_no_assignment_is_written_while_no_shard_is_live() -> None:
    c = core()
    join(c, 0, shards=())
    lead(c, 0)
    assert of(tick(c, 4 * S), ReadAssignment)
    commands = c.handle(AssignmentRead(assignment=None, revision=0), 4 * S)
    assert not of(commands, WriteAssignment) and notes(commands) == ["epoch_no_live_shards"]


def test_models_stay_where_they_are_epoch_after_epoch_while_members_and_rates_hold() -> None:
    c = core()
    join(c, 0)
    lead(c, 0)
    current = epoch(c, 3 * S, None)
    for k in range(1, 40):
        now = 3 * S + k * TIMING.epoch_ns
        join(c, now, revision=k + 1)  # fresh heartbeats, same members
        assert epoch(c, now, current, revision=1) is None


def test_a_member_silent_for_a_ttl_is_read_before_it_is_declared_gone_and_its_models_move() -> None:
    c = core()
    join(c, 0, shards=("shard-0", "shard-1", "shard-2"))
    lead(c, 0)
    current = epoch(c, 3 * S, None)
    victim = current.models["jax_model"]
    survivors = [s for s in ("shard-0", "shard-1", "shard-2") if s != victim]
    now = 4 * S  # the victim's last heartbeat was at 0
    join(c, now, shards=survivors, revision=2)  # everyone else keeps heartbeating
    commands = tick(c, now)
    assert of(commands, ReadMember) == [ReadMember(key=f"shard.{victim}")]
    assert not of(commands, WriteAssignment)
    commands = c.handle(MemberRead(key=f"shard.{victim}", outcome=ReadOutcome.NOT_FOUND), now)
    assert notes(commands) == ["member_gone"]
    moved = epoch(c, now, current, revision=1)
    assert moved.models["jax_model"] in survivors and moved.epoch == current.epoch + 1


def test_a_failed_read_of_a_suspect_removes_nobody() -> None:
    c = core()
    join(c, 0)
    c.handle(MemberRead(key="shard.shard-0", outcome=ReadOutcome.FAILED), 4 * S)
    assert "shard-0" in c.view.shards()


def test_leadership_ends_a_lease_after_the_last_renewal_was_sent_even_without_an_answer() -> None:
    c = core()
    lead(c, 0)
    assert c.leading(TIMING.lease_ns - 1)
    commands = c.handle(Tick(), TIMING.lease_ns // 3)
    assert of(commands, RenewLease) == [RenewLease(revision=7)]
    assert not c.leading(TIMING.lease_ns), "a paused leader stops acting before a standby can take over"


def test_a_raced_write_is_read_again_and_retried() -> None:
    c = core()
    join(c, 0)
    lead(c, 0)
    assert of(tick(c, 3 * S), ReadAssignment)
    commands = c.handle(AssignmentRead(assignment=None, revision=0), 3 * S)
    assert of(commands, WriteAssignment)[0].revision == 0
    assert notes(c.handle(AssignmentWritten(outcome=WriteOutcome.RACED), 3 * S)) == ["assignment_raced"]
    assert of(tick(c, 3 * S + 1), ReadAssignment), "retried at once"


def test_a_kv_that_lost_the_assignment_gets_it_back_with_the_same_placement_and_a_higher_epoch() -> None:
    c = core()
    join(c, 0)
    lead(c, 0)
    first = epoch(c, 3 * S, None)
    join(c, 3 * S + TIMING.epoch_ns, revision=2)
    again = epoch(c, 3 * S + TIMING.epoch_ns, None)  # the bucket came back empty
    assert again is not None and again.models == first.models and again.epoch > first.epoch


def test_a_watch_silent_for_a_ttl_is_restarted() -> None:
    c = core()
    join(c, 0)
    assert not of(c.handle(Tick(), TIMING.heartbeat_ttl_ns), RestartWatches)
    commands = c.handle(Tick(), TIMING.heartbeat_ttl_ns + 1)
    assert of(commands, RestartWatches) and "watch_silent" in notes(commands)


def test_a_model_in_transit_keeps_its_rate_so_the_balance_rule_does_not_move_it_back() -> None:
    c = core()
    join(c, 0)
    busy = ShardHeartbeat(shard_id="shard-0", models={"jax_model": ModelLoad(rate_rps=500.0, pending=0)})
    c.handle(MemberUpdate(key="shard.shard-0", heartbeat=busy, revision=5), S)
    inputs = c._inputs(None, S)  # noqa: SLF001 - the planning rate is the point here
    quiet = ShardHeartbeat(shard_id="shard-0", models={})
    c.handle(MemberUpdate(key="shard.shard-0", heartbeat=quiet, revision=6), 2 * S)
    assert inputs.rates["jax_model"] == 500.0
    assert c._inputs(None, 3 * S).rates["jax_model"] == 500.0  # noqa: SLF001
