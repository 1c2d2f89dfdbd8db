"""The lost-slot watch's decisions (shard/service/slot_watch.py), without a server: which slots
are overdue, when an agent's silence is long enough, which plans' requests the shard may answer
after a reconnect (docs/reliability.md §2 rules 3 and 4), and what counts as this process
stalling."""

from shard.service.publish import InFlight
from shard.service.slot_watch import (
    AGENT_SILENCE_NS,
    RECONNECT_SETTLE_NS,
    TICK_NS,
    fate_unknown,
    overdue_slots,
    silent_too_long,
    stalled_ns,
    take_overdue_plans,
)

MS = 1_000_000
GRACE_NS = 500 * MS


def flight(slot: str, finish_ms: int, *, sent_ms: int = 0, connection: int = 0) -> InFlight:
    return InFlight(slot, "resnet", [], sent_ms * MS, finish_ms * MS, connection)


def test_a_slot_is_overdue_only_once_a_plan_is_late_by_more_than_the_grace() -> None:
    flights = [flight("s1", 100), flight("s0", 100), flight("s0", 300), flight("s2", 900)]
    assert overdue_slots(flights, 600 * MS, GRACE_NS) == []
    assert overdue_slots(flights, 600 * MS + 1, GRACE_NS) == ["s0", "s1"]


def test_silence_counts_from_the_slots_oldest_plan() -> None:
    flights = [flight("s0", 300), flight("s0", 100), flight("s1", 0)]
    limit = 100 * MS + GRACE_NS + AGENT_SILENCE_NS
    assert not silent_too_long(flights, "s0", limit, GRACE_NS)
    assert silent_too_long(flights, "s0", limit + 1, GRACE_NS)


def test_a_slot_without_plans_is_never_silent_too_long() -> None:
    assert not silent_too_long([flight("s1", 0)], "s0", 10**12, GRACE_NS)


def test_a_plan_sent_on_the_current_connection_after_it_settled_is_answered() -> None:
    reconnected_at = 1_000 * MS
    settled = flight("s0", 0, sent_ms=(reconnected_at + RECONNECT_SETTLE_NS) // MS, connection=2)
    assert not fate_unknown(settled, reconnects=2, reconnected_at_ns=reconnected_at)


def test_a_plan_sent_before_the_connection_broke_is_left_unanswered() -> None:
    assert fate_unknown(flight("s0", 0, sent_ms=10_000, connection=1), reconnects=2, reconnected_at_ns=0)


def test_a_plan_sent_while_everyone_was_resubscribing_is_left_unanswered() -> None:
    reconnected_at = 1_000 * MS
    early = flight("s0", 0, sent_ms=(reconnected_at + RECONNECT_SETTLE_NS) // MS - 1, connection=2)
    assert fate_unknown(early, reconnects=2, reconnected_at_ns=reconnected_at)


def test_losing_a_slot_takes_exactly_its_overdue_plans() -> None:
    inflight = {1: flight("s0", 10), 2: flight("s1", 10), 3: flight("s0", 20), 4: flight("s0", 900)}
    taken = take_overdue_plans(inflight, "s0", 520 * MS + 1, GRACE_NS)
    assert [f.finish_ns for f in taken] == [10 * MS, 20 * MS]
    assert list(inflight) == [2, 4]


def test_a_plan_younger_than_its_grace_is_never_answered_by_the_shard() -> None:
    """The agent replies to a plan until its lost_after (finish + grace): a shard that answered
    it earlier would be the first of two replies (seen as 18 duplicates under link-reset)."""
    inflight = {1: flight("s0", 100)}
    assert take_overdue_plans(inflight, "s0", 100 * MS + GRACE_NS, GRACE_NS) == []
    assert len(take_overdue_plans(inflight, "s0", 100 * MS + GRACE_NS + 1, GRACE_NS)) == 1


def test_a_tick_more_than_two_ticks_late_is_a_stall_of_this_process() -> None:
    assert stalled_ns(TICK_NS + 2 * TICK_NS, 0) == 0
    assert stalled_ns(TICK_NS + 2 * TICK_NS + 1, 0) == 2 * TICK_NS + 1
