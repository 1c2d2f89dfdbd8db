"""The coordinator's own view of who is alive (issue 11 §1). Pure: no I/O, no clocks.

Idea. A member is alive while this coordinator keeps observing new heartbeats from it. Every
heartbeat it receives (from its watch of the members bucket, or from a direct read it made)
stamps the member with the coordinator's own time. A member not seen for the TTL is only a
*suspect*: the shell reads its key directly, and only two pieces of evidence remove it, the
member's own goodbye (a delete on the watch) or a successful read that finds its key gone. A
read that fails is a KV outage, not a departure, and for one TTL after an outage ends nobody is
declared gone: members whose heartbeats could not land meanwhile get the time to write again.

Why not list the bucket each time: a listing (`kv.keys()`) is a watch that stops at the first
entry delivered with nothing pending after it, and a key rewritten while the listing is being
delivered moves behind that point, so the listing silently leaves it out (measured:
`python -m load.bench.kv_listing`, BENCHMARKS.md §10). With heartbeats rewritten every second,
one listing in a few hundred missed members, and the old coordinator read a listing without
shards as "every shard left" and wrote an assignment with no models.

Revisions: watch updates arrive in stream order, so a different revision is a newer heartbeat
(or a bucket recreated after its state was lost, whose revisions start again from 1). A direct
read may be served by a replica that lags, so it refreshes a member only with a newer revision.
"""

from __future__ import annotations

import enum

import msgspec

from schemas.control import AgentHeartbeat, ShardHeartbeat

Heartbeat = ShardHeartbeat | AgentHeartbeat


class ReadOutcome(enum.Enum):
    FOUND = "found"
    NOT_FOUND = "not_found"  # the key is gone: aged out or deleted
    FAILED = "failed"  # the read itself failed: says nothing about the member


class Member(msgspec.Struct, kw_only=True):
    heartbeat: Heartbeat
    revision: int
    seen_ns: int  # this coordinator's time when it last saw a new heartbeat


class Confirmation(msgspec.Struct, frozen=True, kw_only=True):
    """What a direct read of a suspect's key showed."""

    removed: bool = False  # the key is gone: the member left
    watch_stale: bool = False  # the key holds a heartbeat the watch never delivered


def member_key(heartbeat: Heartbeat) -> str:
    if isinstance(heartbeat, ShardHeartbeat):
        return f"shard.{heartbeat.shard_id}"
    return f"agent.{heartbeat.agent_id}"


class MemberView:
    """Members by key (`shard.<id>`, `agent.<id>`), from heartbeats this coordinator observed."""

    def __init__(self, ttl_ns: int, started_ns: int) -> None:
        assert ttl_ns > 0
        self.ttl_ns = ttl_ns
        self.members: dict[str, Member] = {}
        self.outage = False
        # Departures count only from here: the view's start, or the end of the last outage.
        self.trusted_from_ns = started_ns

    # ---- what the watch delivers ----------------------------------------------------------
    def observe(self, key: str, heartbeat: Heartbeat, revision: int, now_ns: int) -> bool:
        """A heartbeat from the watch. Returns True for a member not known before."""
        self.read_ok(now_ns)
        member = self.members.get(key)
        if member is None:
            self.members[key] = Member(heartbeat=heartbeat, revision=revision, seen_ns=now_ns)
            return True
        if revision != member.revision:  # a restarted watch re-delivers the same revision
            member.heartbeat, member.revision, member.seen_ns = heartbeat, revision, now_ns
        return False

    def left(self, key: str, now_ns: int) -> bool:
        """The member deleted its key (it stopped cleanly) or the server purged it."""
        self.read_ok(now_ns)
        return self.members.pop(key, None) is not None

    # ---- KV health ------------------------------------------------------------------------
    def read_failed(self) -> None:
        self.outage = True

    def read_ok(self, now_ns: int) -> None:
        if self.outage:
            self.outage = False
            self.trusted_from_ns = max(self.trusted_from_ns, now_ns)

    # ---- departures -----------------------------------------------------------------------
    def _silent(self, member: Member, now_ns: int) -> bool:
        """Not seen for the TTL (counted from the end of the last outage at the earliest)."""
        return now_ns - max(member.seen_ns, self.trusted_from_ns) > self.ttl_ns

    def suspects(self, now_ns: int) -> list[str]:
        """Members silent for longer than the TTL: to be read directly. Also during an outage:
        those reads are how the view learns that it ended (a watch may have died with it)."""
        return sorted(k for k, m in self.members.items() if self._silent(m, now_ns))

    def confirm(self, key: str, outcome: ReadOutcome, heartbeat: Heartbeat | None, revision: int,
                now_ns: int) -> Confirmation:
        """The result of reading a suspect's key."""
        if outcome is ReadOutcome.FAILED:
            self.read_failed()
            return Confirmation()
        was_outage = self.outage
        self.read_ok(now_ns)
        member = self.members.get(key)
        if member is None:
            return Confirmation()
        if outcome is ReadOutcome.NOT_FOUND:
            if was_outage or not self._silent(member, now_ns):
                return Confirmation()  # seen again meanwhile, or the outage's grace starts now
            del self.members[key]
            return Confirmation(removed=True)
        assert heartbeat is not None
        if revision > member.revision:
            member.heartbeat, member.revision, member.seen_ns = heartbeat, revision, now_ns
            return Confirmation(watch_stale=True)
        # The same (or a lagging replica's older) entry: the server still holds it, so it has not
        # aged out yet; it stays a suspect and is read again.
        return Confirmation()

    # ---- snapshots --------------------------------------------------------------------------
    def shards(self) -> dict[str, ShardHeartbeat]:
        return {k.split(".", 1)[1]: m.heartbeat for k, m in sorted(self.members.items())
                if isinstance(m.heartbeat, ShardHeartbeat)}

    def agents(self) -> dict[str, AgentHeartbeat]:
        return {k.split(".", 1)[1]: m.heartbeat for k, m in sorted(self.members.items())
                if isinstance(m.heartbeat, AgentHeartbeat)}
