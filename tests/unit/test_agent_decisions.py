"""The agent's decisions (gpu_agent/decisions.py) through `decide()` only: fencing, rejection,
expiry, the withhold rule, a paused agent, and an agent whose wall clock is off (the arithmetic
behind docs/reliability.md §1.1).

Worked numbers: a shard sends a plan at wall time SENT; the batch is predicted to finish 10 ms
later; the slot grace is 2 s, so the shard may declare the slot lost at SENT + 2.010 s and the
agent withholds from SENT + 1.760 s. The plan's one request is due at SENT + 12 ms."""

import msgspec
import pytest

from gpu_agent.decisions import (
    WITHHOLD_MARGIN_NS,
    Expire,
    HandBack,
    PlanTimes,
    Reject,
    RejectReason,
    Run,
    SlotState,
    Stage,
    Withhold,
    decide,
)
from gpu_agent.fencing import SlotOwner
from schemas.plan import BatchPlan, PlanRequest

MS = 1_000_000
SENT = 1_800_000_000_000 * MS  # the shard's wall clock when it sent the plan
LOST_AFTER = SENT + 10 * MS + 2_000 * MS
DUE = SENT + 12 * MS
OWNED = SlotState(owner=SlotOwner(shard="shard-0", epoch=3), models=frozenset({"resnet"}))


def plan_times(*, shard: str = "shard-0", epoch: int = 3, model: str = "resnet", lost_after: int = LOST_AFTER,
               deadlines: tuple[int, ...] = (DUE,)) -> PlanTimes:
    return PlanTimes(shard_id=shard, epoch=epoch, model=model, lost_after_unix_ns=lost_after,
                     deadlines_unix_ns=deadlines)


def test_a_plan_in_time_from_its_slots_owner_runs_at_every_stage() -> None:
    for stage in Stage:
        assert decide(stage, plan_times(), OWNED, SENT + 1 * MS) == Run(), stage


def test_a_plan_from_another_shard_is_handed_back_on_receipt() -> None:
    assert decide(Stage.RECEIVED, plan_times(shard="shard-1"), OWNED, SENT + 1 * MS) == HandBack()


def test_a_plan_from_an_older_epoch_is_handed_back_and_a_newer_one_runs() -> None:
    assert decide(Stage.RECEIVED, plan_times(epoch=2), OWNED, SENT + 1 * MS) == HandBack()
    assert decide(Stage.RECEIVED, plan_times(epoch=4), OWNED, SENT + 1 * MS) == Run()


def test_a_slot_nobody_claimed_takes_plans_from_any_shard() -> None:
    unclaimed = SlotState(owner=SlotOwner(), models=frozenset({"resnet"}))
    assert decide(Stage.RECEIVED, plan_times(shard="anyone", epoch=0), unclaimed, SENT + 1 * MS) == Run()


def test_a_plan_arriving_at_a_full_queue_is_rejected() -> None:
    full = msgspec.structs.replace(OWNED, queue_full=True)
    assert decide(Stage.RECEIVED, plan_times(), full, SENT + 1 * MS) == Reject(RejectReason.QUEUE_FULL)


def test_a_fenced_plan_is_handed_back_even_when_the_queue_is_full() -> None:
    full = msgspec.structs.replace(OWNED, queue_full=True)
    assert decide(Stage.RECEIVED, plan_times(shard="shard-1"), full, SENT + 1 * MS) == HandBack()


def test_a_plan_for_a_model_the_slot_does_not_host_is_rejected_when_dequeued() -> None:
    decision = decide(Stage.DEQUEUED, plan_times(model="bert"), OWNED, SENT + 1 * MS)
    assert decision == Reject(RejectReason.MODEL_NOT_HOSTED)


def test_requests_past_their_deadline_at_start_expire_and_the_rest_run() -> None:
    times = plan_times(deadlines=(DUE, SENT + 5 * MS, DUE + 50 * MS, SENT + 8 * MS))
    decision = decide(Stage.STARTING, times, OWNED, SENT + 9 * MS)
    assert decision == Expire(expired=(1, 3), kept=(0, 2))


def test_a_plan_whose_every_request_is_past_its_deadline_expires_whole() -> None:
    decision = decide(Stage.STARTING, plan_times(deadlines=(DUE, DUE)), OWNED, DUE + 1)
    assert decision == Expire(expired=(0, 1), kept=())


def test_a_request_exactly_at_its_deadline_still_runs() -> None:
    assert decide(Stage.STARTING, plan_times(), OWNED, DUE) == Run()


def test_a_request_without_a_deadline_never_expires() -> None:
    assert decide(Stage.STARTING, plan_times(deadlines=(0,)), OWNED, SENT + 1_000 * MS) == Run()


def test_expiry_is_decided_only_when_the_batch_starts() -> None:
    for stage in (Stage.RECEIVED, Stage.DEQUEUED, Stage.REPLYING):
        assert decide(stage, plan_times(), OWNED, DUE + 1 * MS) == Run(), stage


@pytest.mark.parametrize("stage", list(Stage))
def test_from_the_margin_before_lost_after_every_stage_withholds(stage: Stage) -> None:
    withhold_from = LOST_AFTER - WITHHOLD_MARGIN_NS
    assert not isinstance(decide(stage, plan_times(), OWNED, withhold_from - 1), Withhold)
    assert decide(stage, plan_times(), OWNED, withhold_from) == Withhold(late_ns=-WITHHOLD_MARGIN_NS)


def test_withholding_comes_before_fencing_rejection_and_expiry() -> None:
    late = LOST_AFTER + 5 * MS
    full = msgspec.structs.replace(OWNED, queue_full=True)
    assert decide(Stage.RECEIVED, plan_times(shard="shard-1"), OWNED, late) == Withhold(late_ns=5 * MS)
    assert decide(Stage.RECEIVED, plan_times(), full, late) == Withhold(late_ns=5 * MS)
    assert decide(Stage.DEQUEUED, plan_times(model="bert"), OWNED, late) == Withhold(late_ns=5 * MS)
    assert decide(Stage.STARTING, plan_times(), OWNED, late) == Withhold(late_ns=5 * MS)


def test_a_plan_without_a_lost_after_instant_is_never_withheld() -> None:
    assert decide(Stage.REPLYING, plan_times(lost_after=0), OWNED, LOST_AFTER + 60_000 * MS) == Run()


def test_a_paused_agent_expires_a_plan_that_sat_in_its_socket_past_its_deadline() -> None:
    # The agent was stopped 500 ms with the plan in its socket buffer. Read now, the plan is new
    # to it, and a budget measured from receipt would call it fresh; its deadline says it is not.
    resumed = SENT + 500 * MS
    assert decide(Stage.RECEIVED, plan_times(), OWNED, resumed) == Run()
    assert decide(Stage.DEQUEUED, plan_times(), OWNED, resumed) == Run()
    assert decide(Stage.STARTING, plan_times(), OWNED, resumed) == Expire(expired=(0,), kept=())


def test_a_paused_agent_withholds_a_plan_that_sat_in_its_socket_past_its_lost_moment() -> None:
    resumed = SENT + 3_000 * MS  # stopped 3 s: its shard may have answered the plan already
    assert decide(Stage.RECEIVED, plan_times(), OWNED, resumed) == Withhold(late_ns=resumed - LOST_AFTER)


def test_the_plans_budget_and_shard_clock_fields_change_no_decision() -> None:
    request = PlanRequest(1, "_INBOX.a", b"{}", "application/json", deadline_unix_ns=DUE)

    def plan(exec_at_ns: int, deadline_us: int) -> BatchPlan:
        return BatchPlan(version=1, plan_id=1, shard_id="shard-0", epoch=3, slot_id="s0", model="resnet",
                         requests=[request], exec_at_ns=exec_at_ns, deadline_us=deadline_us,
                         deadline_unix_ns=DUE, lost_after_unix_ns=LOST_AFTER)

    one, other = PlanTimes.of(plan(5, 1)), PlanTimes.of(plan(-(10**18), 10**12))
    assert one == other == plan_times()
    for stage in Stage:
        for now in (SENT, DUE + 1, LOST_AFTER):
            assert decide(stage, one, OWNED, now) == decide(stage, other, OWNED, now)


# An agent whose wall clock is off by `offset` from the shard's (positive: ahead). The shard's
# instants are exact; the agent reads `true time + offset`.


def agent_wall(true_ns: int, offset_ns: int) -> int:
    return true_ns + offset_ns


def test_an_agent_clock_ahead_by_less_than_a_requests_slack_runs_it_and_by_more_expires_it() -> None:
    start = SENT + 10 * MS  # 2 ms before the request's deadline, as Symphony's late dispatch leaves it
    assert decide(Stage.STARTING, plan_times(), OWNED, agent_wall(start, 1 * MS)) == Run()
    expired = decide(Stage.STARTING, plan_times(), OWNED, agent_wall(start, 3 * MS))
    assert expired == Expire(expired=(0,), kept=())


def test_an_agent_clock_ahead_by_the_slot_grace_withholds_plans_it_reads_at_once() -> None:
    received = SENT + 1 * MS
    # Withheld from LOST_AFTER - margin = SENT + 1.760 s: an offset of 1.759 s still runs the
    # plan (its request expires), 1.760 s withholds it and the shard answers.
    assert decide(Stage.RECEIVED, plan_times(), OWNED, agent_wall(received, 1_758 * MS)) == Run()
    assert decide(Stage.STARTING, plan_times(), OWNED, agent_wall(received, 1_758 * MS)) == Expire((0,), ())
    assert isinstance(decide(Stage.RECEIVED, plan_times(), OWNED, agent_wall(received, 1_760 * MS)), Withhold)


def test_an_agent_clock_behind_by_less_than_the_margin_withholds_before_the_shard_may_answer() -> None:
    # At LOST_AFTER (true time) the shard may declare the slot lost and answer 503 itself.
    for behind in (0, 100 * MS, WITHHOLD_MARGIN_NS):
        assert isinstance(decide(Stage.REPLYING, plan_times(), OWNED, agent_wall(LOST_AFTER, -behind)), Withhold)


def test_an_agent_clock_behind_by_more_than_the_margin_would_reply_after_the_shard_may_have() -> None:
    # Beyond the tolerance: at LOST_AFTER the agent still answers, a second reply if the shard
    # has declared the slot lost meanwhile (docs/reliability.md §1.1).
    behind = WITHHOLD_MARGIN_NS + 50 * MS
    assert decide(Stage.REPLYING, plan_times(), OWNED, agent_wall(LOST_AFTER, -behind)) == Run()


def test_an_agent_clock_behind_starts_work_past_its_deadline() -> None:
    late_start = DUE + 100 * MS
    assert decide(Stage.STARTING, plan_times(), OWNED, agent_wall(late_start, -200 * MS)) == Run()
    assert decide(Stage.STARTING, plan_times(), OWNED, agent_wall(late_start, -50 * MS)) == Expire((0,), ())
