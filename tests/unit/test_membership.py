"""The coordinator's own membership view (coordinator/membership.py): members come from what it
observes, and leave only on evidence, never because a listing or a read came back short."""

from coordinator.membership import MemberView, ReadOutcome
from schemas.control import AgentHeartbeat, ShardHeartbeat

S = 1_000_000_000
TTL = 3 * S


def shard(name: str) -> ShardHeartbeat:
    return ShardHeartbeat(shard_id=name)


def view_with(*names: str) -> MemberView:
    view = MemberView(TTL, started_ns=0)
    for i, name in enumerate(names):
        view.observe(f"shard.{name}", shard(name), revision=i + 1, now_ns=0)
    return view


def test_a_heartbeat_makes_a_member_alive_and_a_new_one_is_reported() -> None:
    view = MemberView(TTL, started_ns=0)
    assert view.observe("shard.a", shard("a"), 1, 0) is True
    assert view.observe("shard.a", shard("a"), 2, S) is False
    view.observe("agent.x", AgentHeartbeat(agent_id="x", device="cpu", slots=[]), 3, S)
    assert list(view.shards()) == ["a"] and list(view.agents()) == ["x"]


def test_a_silent_member_is_only_a_suspect_until_a_read_finds_its_key_gone() -> None:
    view = view_with("a", "b")
    view.observe("shard.b", shard("b"), 10, 2 * S)
    assert view.suspects(TTL) == []
    assert view.suspects(TTL + 1) == ["shard.a"]
    assert list(view.shards()) == ["a", "b"], "silence alone removes nobody"
    result = view.confirm("shard.a", ReadOutcome.NOT_FOUND, None, 0, TTL + 2)
    assert result.removed and list(view.shards()) == ["b"]


def test_a_failed_read_is_an_outage_and_the_grace_restarts_when_it_ends() -> None:
    view = view_with("a")
    assert view.confirm("shard.a", ReadOutcome.FAILED, None, 0, 4 * S).removed is False
    assert view.outage
    # The first read that works ends the outage; even if it finds the key gone (the member's
    # heartbeats could not land meanwhile), the member gets a whole TTL to write again.
    assert view.confirm("shard.a", ReadOutcome.NOT_FOUND, None, 0, 10 * S).removed is False
    assert not view.outage and view.suspects(10 * S + TTL) == []
    assert view.suspects(10 * S + TTL + 1) == ["shard.a"]
    assert view.confirm("shard.a", ReadOutcome.NOT_FOUND, None, 0, 10 * S + TTL + 1).removed


def test_a_read_finding_a_newer_heartbeat_refreshes_the_member_and_says_the_watch_is_stale() -> None:
    view = view_with("a")
    result = view.confirm("shard.a", ReadOutcome.FOUND, shard("a"), 7, 4 * S)
    assert result.watch_stale and not result.removed
    assert view.suspects(4 * S + TTL) == []


def test_a_lagging_replica_showing_an_older_entry_neither_removes_nor_refreshes() -> None:
    view = view_with("a")
    view.observe("shard.a", shard("a"), 5, S)
    result = view.confirm("shard.a", ReadOutcome.FOUND, shard("a"), 4, 5 * S)
    assert not result.removed and not result.watch_stale
    assert view.suspects(5 * S) == ["shard.a"]


def test_a_restarted_watch_redelivering_the_same_revision_does_not_extend_a_member() -> None:
    view = view_with("a")
    view.observe("shard.a", shard("a"), 1, 2 * S)  # the snapshot of a new watch: same entry
    assert view.suspects(TTL + 1) == ["shard.a"]


def test_a_goodbye_removes_a_member_at_once() -> None:
    view = view_with("a", "b")
    assert view.left("shard.a", S) is True
    assert view.left("shard.a", S) is False
    assert list(view.shards()) == ["b"]


def test_nothing_is_declared_gone_before_the_view_has_watched_for_a_ttl() -> None:
    view = MemberView(TTL, started_ns=100 * S)
    view.observe("shard.a", shard("a"), 1, 0)  # stamped before the view's start (a replayed clock)
    assert view.suspects(100 * S + TTL) == []
