"""What the shard sends for the core's actions (shard/service/publish.py), without a server: the
batch plan a dispatch becomes, when a plan is answered instead of sent, and the reply each drop
reason gets."""

from schemas.plan import PLAN_VERSION, BatchPlan, PlanRequest
from schemas.status import Status
from shard.core.actions import DispatchBatch, DropReason
from shard.service.publish import DROP_REPLY, Pending, Refusal, build_plan, plan_refusal, take_requests

MS = 1_000_000
US = 1000


def test_a_batch_takes_its_requests_from_the_queue_with_their_wait() -> None:
    pending = {1: Pending("in.1", b"a", "application/json", "c1", 0, 900 * MS),
               2: Pending("in.2", b"b", "application/msgpack", "", 2 * MS, 800 * MS),
               3: Pending("in.3", b"c", "application/json", "", 3 * MS, 700 * MS)}
    requests = take_requests(pending, [1, 2], 5 * MS)
    assert requests == [PlanRequest(1, "in.1", b"a", "application/json", "c1", 5_000, 900 * MS),
                        PlanRequest(2, "in.2", b"b", "application/msgpack", "", 3_000, 800 * MS)]
    assert list(pending) == [3]


def test_a_plan_carries_the_earliest_deadline_a_budget_of_two_reply_trips_and_when_it_counts_as_lost() -> None:
    action = DispatchBatch(plan_id=7, slot_id=0, model="resnet", request_ids=[1, 2], exec_at_ns=12 * MS,
                           finish_at_ns=20 * MS)
    requests = [PlanRequest(1, "in.1", b"", "application/json", deadline_unix_ns=900 * MS),
                PlanRequest(2, "in.2", b"", "application/json", deadline_unix_ns=800 * MS)]
    plan = build_plan(action, requests, shard_id="shard-0", slot_id="s0", epoch=3, now_ns=10 * MS,
                      wall_ns=500 * MS, resp_ns=2 * MS, grace_ns=300 * MS)
    assert plan == BatchPlan(version=PLAN_VERSION, plan_id=7, shard_id="shard-0", slot_id="s0", epoch=3,
                             model="resnet", requests=requests, exec_at_ns=12 * MS,
                             deadline_us=10_000 + 4_000,  # finish - now, plus 2 x Dresp
                             deadline_unix_ns=800 * MS,  # the earliest member's
                             lost_after_unix_ns=500 * MS + 10 * MS + 300 * MS)  # wall now + to finish + grace


def test_a_plan_whose_predicted_finish_has_passed_keeps_a_budget_of_at_least_zero() -> None:
    action = DispatchBatch(1, 0, "resnet", [1], exec_at_ns=0, finish_at_ns=0)
    requests = [PlanRequest(1, "in.1", b"", "application/json")]
    plan = build_plan(action, requests, shard_id="s", slot_id="s0", epoch=0, now_ns=50 * MS, wall_ns=0,
                      resp_ns=2 * MS, grace_ns=0)
    assert plan.deadline_us == 0


def test_a_plan_may_be_sent_to_a_slot_that_runs_its_model_within_the_payload_limit() -> None:
    assert plan_refusal("resnet", "s0", {"resnet"}, 4, 1_000, 1_000) is None


def test_a_plan_for_a_slot_that_cannot_run_its_model_is_answered_503() -> None:
    assert plan_refusal("resnet", "s0", {"mlp"}, 4, 10, 1_000) == Refusal(
        "slot_cannot_run_model", Status.UNAVAILABLE, "unavailable: slot s0 cannot run resnet", "unavailable")


def test_a_plan_over_the_server_max_payload_is_answered_413_with_sizes() -> None:
    refusal = plan_refusal("resnet", "s0", {"resnet"}, 4, 1_001, 1_000)
    assert refusal == Refusal("too_large", Status.TOO_LARGE, "batch of 4 is 1001 bytes, over the server's max_payload "
                              "1000; send smaller bodies", "rejected")


def test_each_drop_reason_has_a_reply_and_an_outcome() -> None:
    assert set(DROP_REPLY) == set(DropReason)
    assert DROP_REPLY[DropReason.DEADLINE] == (Status.DROPPED, "dropped: its deadline cannot be met", "dropped")
    assert DROP_REPLY[DropReason.OVERLOADED][::2] == (Status.OVERLOADED, "rejected")
    assert DROP_REPLY[DropReason.UNKNOWN_MODEL][::2] == (Status.UNKNOWN_MODEL, "unavailable")
    assert DROP_REPLY[DropReason.NO_SLOT][::2] == (Status.UNAVAILABLE, "unavailable")
