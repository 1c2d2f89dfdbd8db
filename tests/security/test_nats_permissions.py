"""A real nats-server with symphony's users (runtime/nats_auth.py), attacked from each role: every
publish or subscription outside a user's permissions is refused (the offender's error callback
hears of it, the server logs it, and the would-be receiver never gets the message), while the
same traffic from the right role goes through."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import BucketNotFoundError

from runtime.connect import (
    NatsUnreachable,
    connect_client,
    connect_options,
    connect_service,
    flush_ordered,
    hand_back_request,
)
from runtime.kv import open_bucket, open_buckets
from runtime.nats_auth import Auth, Deployment, connect_fields, load_creds, new_seed
from runtime.nats_server import NatsServer
from schemas.control import MEMBERS_BUCKET, STATE_BUCKET

pytestmark = pytest.mark.asyncio

P = "symphony"
QUIET_S = 0.3  # long enough for a message to arrive on loopback if it were going to


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Auth:
    return Auth.create(Deployment(agents={"a": ("a0", "a1"), "b": ("b0",)}, clients=("alice", "bob")),
                       tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def server(auth: Auth) -> Iterator[NatsServer]:
    with NatsServer(auth=auth) as server:
        yield server


class Conn:
    """A connection as one user, recording the errors the server sends it."""

    def __init__(self, nc: nats.NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    def refused(self, what: str) -> bool:
        return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors)


@contextlib.asynccontextmanager
async def connected(server: NatsServer, auth: Auth, user: str) -> AsyncIterator[Conn]:
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await nats.connect(server.url, error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0,
                            **connect_options(auth.creds(user)))
    try:
        yield Conn(nc, errors)
    finally:
        await nc.close()


async def inbox(conn: Conn, subject: str) -> list[nats.aio.msg.Msg]:
    got: list = []

    async def on_msg(msg) -> None:
        got.append(msg)

    await conn.nc.subscribe(subject, cb=on_msg)
    await flush_ordered(conn.nc)
    return got


async def settle(*conns: Conn) -> None:
    for conn in conns:
        await flush_ordered(conn.nc)
    await asyncio.sleep(QUIET_S)


async def arrived(got: list, count: int = 1, timeout_s: float = 10.0) -> list[bytes]:
    """The allowed control message's payloads, waited for: on a loaded machine delivery can take
    longer than QUIET_S, and a refused message is only proven absent once the allowed one is in."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    while len(got) < count and loop.time() < until:
        await asyncio.sleep(0.05)
    await asyncio.sleep(QUIET_S if got else 0)  # anything forbidden sent alongside would be in by now
    return [m.data for m in got]


async def test_a_client_cannot_publish_a_plan_but_a_shard_can(server: NatsServer, auth: Auth) -> None:
    async with connected(server, auth, "agent-a") as agent, connected(server, auth, "alice") as client, \
            connected(server, auth, "shard") as shard:
        plans = await inbox(agent, f"{P}.slot.a0.plan")
        await client.nc.publish(f"{P}.slot.a0.plan", b"forged plan")
        await settle(client, agent)
        assert plans == []
        assert client.refused(f"publish to \"{P}.slot.a0.plan\"")
        assert "Publish Violation" in server.log() and f'"$G/nkey:{auth.nkeys["alice"]}"' in server.log()
        await shard.nc.publish(f"{P}.slot.a0.plan", b"real plan")  # the control: the shard's plan arrives
        await settle(shard, agent)
        assert await arrived(plans) == [b"real plan"]


async def test_an_agent_can_answer_clients_but_not_write_into_role_inboxes(server: NatsServer, auth: Auth) -> None:
    async with connected(server, auth, "agent-a") as agent, connected(server, auth, "shard") as shard, \
            connected(server, auth, "operator") as operator, connected(server, auth, "alice") as client:
        to_shard = await inbox(shard, "_INBOX_shard.>")
        to_operator = await inbox(operator, "_INBOX_operator.>")
        to_client = await inbox(client, "_INBOX_client.alice.>")
        for subject in ("_INBOX_shard.x.1", "_INBOX_operator.x.1", "_INBOX_coordinator.x.1", "_INBOX.x.1",
                        f"{P}.slot.b0.plan", f"{P}.agent.b.claim", f"{P}.meta"):
            await agent.nc.publish(subject, b"forged")
        await agent.nc.publish("_INBOX_client.alice.x.1", b"your result")
        await settle(agent, shard, operator, client)
        assert await arrived(to_client) == [b"your result"]
        assert to_shard == [] and to_operator == []
        assert agent.refused('publish to "_INBOX_shard.x.1"') and agent.refused('publish to "_INBOX_operator.x.1"')


async def test_an_agent_subscribes_only_its_own_slots_and_subjects(server: NatsServer, auth: Auth) -> None:
    async with connected(server, auth, "agent-a") as agent:
        for subject in (f"{P}.slot.b0.plan", f"{P}.slot.*.plan", f"{P}.agent.b.claim", f"{P}.infer.m",
                        "_INBOX_client.alice.>", "_INBOX_agent.b.>", ">"):
            await agent.nc.subscribe(subject)
        await settle(agent)
        for subject in (f"{P}.slot.b0.plan", f"{P}.agent.b.claim", "_INBOX_client.alice.>", ">"):
            assert agent.refused(f'subscription to "{subject}"'), subject


async def test_a_client_cannot_read_another_clients_inbox(server: NatsServer, auth: Auth) -> None:
    async with connected(server, auth, "alice") as alice, connected(server, auth, "bob") as bob, \
            connected(server, auth, "agent-a") as agent:
        stolen = []
        for subject in ("_INBOX_client.bob.>", "_INBOX_client.>", "_INBOX.>", ">"):
            stolen.append(await inbox(alice, subject))
        mine = await inbox(bob, "_INBOX_client.bob.>")
        await agent.nc.publish("_INBOX_client.bob.req.1", b"bob's result")
        await settle(alice, bob, agent)
        assert await arrived(mine) == [b"bob's result"]
        assert all(got == [] for got in stolen)
        assert alice.refused('subscription to "_inbox_client.bob.>"') and alice.refused('subscription to ">"')


async def test_a_client_request_gets_its_answer_in_its_own_inbox(server: NatsServer, auth: Auth) -> None:
    """The client side of the protocol under permissions: request, reply from an agent to the
    inbox carried in the plan."""
    async with connected(server, auth, "alice") as client, connected(server, auth, "shard") as shard, \
            connected(server, auth, "agent-a") as agent:
        async def ingress(msg) -> None:
            await shard.nc.publish(f"{P}.slot.a0.plan", msg.reply.encode())

        async def execute(msg) -> None:
            await agent.nc.publish(msg.data.decode(), b"result")

        await shard.nc.subscribe(f"{P}.infer.m", queue=f"{P}.infer.m", cb=ingress)
        await agent.nc.subscribe(f"{P}.slot.a0.plan", cb=execute)
        await settle(shard, agent)
        reply = await client.nc.request(f"{P}.infer.m", b"x", timeout=2)
        assert reply.data == b"result" and reply.subject.startswith("_INBOX_client.alice.")
        assert client.errors == [] and shard.errors == [] and agent.errors == []


async def test_a_client_gathers_statistics_from_shards_and_agents_but_cannot_answer_for_them(
        server: NatsServer, auth: Auth) -> None:
    """`symphony.stats` under permissions: a client user asks, a shard and an agent answer into its
    inbox; a client cannot subscribe to the subject to answer in their place."""
    from runtime.stats import ModelCounters, gather_statistics, serve_stats, snapshots

    counters = {"m": ModelCounters()}
    counters["m"].failed(1, 5, 1_700_000_000_000_000_000)
    members = (["shard.s", "agent.a"], True)
    async with connected(server, auth, "alice") as client, connected(server, auth, "bob") as bob, \
            connected(server, auth, "shard") as shard, connected(server, auth, "agent-a") as agent:
        await serve_stats(shard.nc, P, "shard.s", lambda: members, lambda model: snapshots(counters, model))
        await serve_stats(agent.nc, P, "agent.a", lambda: members, lambda model: snapshots(counters, model))
        await bob.nc.subscribe(f"{P}.stats.*")
        await settle(shard, agent, bob)
        gathered = await gather_statistics(client.nc, P, "m", wait_s=5.0)
        assert gathered.answered == ["agent.a", "shard.s"] and gathered.missing == []
        assert gathered.response.model_stats[0].inference_stats.fail.count == 2
        assert bob.refused(f'subscription to "{P}.stats.*"')
        assert client.errors == [] and shard.errors == [] and agent.errors == []


async def test_a_client_cannot_reach_jetstream_or_kv(server: NatsServer, auth: Auth) -> None:
    coordinator = await connect_service(server.url, "coordinator", auth.creds_path("coordinator"))
    try:
        state = await open_bucket(coordinator, STATE_BUCKET, None)
        await state.put("assignment", b"genuine")
        async with connected(server, auth, "alice") as client:
            js = client.nc.jetstream(timeout=0.5)
            with pytest.raises(nats.errors.TimeoutError):
                await js.key_value(STATE_BUCKET)
            with pytest.raises(nats.errors.TimeoutError):
                await js.account_info()
            with pytest.raises(nats.errors.TimeoutError):
                await client.nc.request(f"$JS.API.DIRECT.GET.KV_{STATE_BUCKET}.$KV.{STATE_BUCKET}.assignment", b"",
                                        timeout=0.5)
            await client.nc.publish(f"$KV.{STATE_BUCKET}.assignment", b"forged")
            await client.nc.publish(f"$JS.API.STREAM.DELETE.KV_{STATE_BUCKET}", b"")
            await settle(client)
            assert client.refused('publish to "$js.api.stream.info.kv_symphony"')
            assert client.refused('publish to "$kv.symphony.assignment"')
            assert client.refused('publish to "$js.api.stream.delete.kv_symphony"')
        assert (await state.get("assignment")).value == b"genuine"
    finally:
        await coordinator.close()


async def test_only_the_coordinator_creates_buckets_and_each_role_writes_its_own_keys(
        server: NatsServer, auth: Auth) -> None:
    shard = await connect_service(server.url, "shard", auth.creds_path("shard"))
    agent = await connect_service(server.url, "agent-a", auth.creds_path("agent-a"))
    coordinator = await connect_service(server.url, "coordinator", auth.creds_path("coordinator"))
    try:
        with pytest.raises(BucketNotFoundError):  # it waits for the coordinator, then gives up
            await open_bucket(shard, "symphony-leader", 3.0, wait_s=0.5)
        buckets = await open_buckets(coordinator, heartbeat_ttl_s=30, lease_s=30)
        mine = await open_buckets(agent, heartbeat_ttl_s=30, lease_s=30)  # opened, not created
        await mine.members.put("agent.a", b"{}")
        await mine.state.put("profiles.m.a", b"{}")
        quick = agent.jetstream(timeout=0.5)  # a refused put gets no ack: it times out
        for bucket, key in ((MEMBERS_BUCKET, "agent.b"), (MEMBERS_BUCKET, "shard.s"), (STATE_BUCKET, "assignment"),
                            (STATE_BUCKET, "profiles.m.b"), ("symphony-leader", "leader")):
            with pytest.raises(nats.errors.TimeoutError):
                await (await quick.key_value(bucket)).put(key, b"forged")
        assert sorted(await buckets.members.keys()) == ["agent.a"]
        assert "profiles.m.b" not in await buckets.state.keys()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            assert (await buckets.state.get("assignment")).value != b"forged"
        with pytest.raises(nats.errors.TimeoutError):
            await (await shard.jetstream(timeout=0.5).key_value(STATE_BUCKET)).put("assignment", b"forged")
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            assert (await buckets.state.get("assignment")).value != b"forged"
    finally:
        for nc in (shard, agent, coordinator):
            await nc.close()


async def test_hand_backs_are_answered_in_the_holders_hand_back_namespace(server: NatsServer, auth: Auth) -> None:
    """A shard re-sends a request it holds; the agent that runs it answers under `_HANDBACK.shard`
    (allowed), never into `_INBOX_shard` (refused)."""
    shard = await connect_service(server.url, "shard", auth.creds_path("shard"))
    try:
        async with connected(server, auth, "shard") as new_owner, connected(server, auth, "agent-a") as agent:
            with pytest.raises(nats.errors.NoRespondersError):  # nobody owns the model yet: retried
                await hand_back_request(shard, f"{P}.infer.m", b"x", timeout=1.0)

            async def ingress(msg) -> None:
                await new_owner.nc.publish(f"{P}.slot.a0.plan", msg.reply.encode())

            async def execute(msg) -> None:
                await agent.nc.publish(msg.data.decode(), b"answer")

            await new_owner.nc.subscribe(f"{P}.infer.m", cb=ingress)
            await agent.nc.subscribe(f"{P}.slot.a0.plan", cb=execute)
            await settle(new_owner, agent)
            answer = await hand_back_request(shard, f"{P}.infer.m", b"x", timeout=2.0)
            assert answer.data == b"answer" and answer.subject.startswith("_HANDBACK.shard.")
            assert agent.errors == []
    finally:
        await shard.close()


async def test_wrong_or_missing_credentials_are_refused(server: NatsServer, auth: Auth, tmp_path: Path) -> None:
    with pytest.raises(NatsUnreachable, match="refused the credentials"):
        await connect_client(server.url, "nobody", creds=None, user="nobody-recorded")
    forged = tmp_path / "forged.json"
    forged.write_text(auth.creds_path("alice").read_text().replace(auth.seeds["alice"], new_seed()))
    forged.chmod(0o600)
    with pytest.raises(NatsUnreachable, match="refused the credentials"):  # a fresh key nobody listed
        await connect_client(server.url, "forger", creds=forged)
    other = Auth.create(auth.deployment, tmp_path / "other-cluster")  # the same users, their own keys
    with pytest.raises(NatsUnreachable, match="refused the credentials"):
        await connect_client(server.url, "stranger", creds=other.creds_path("alice"))


async def raw_login(server: NatsServer, fields: Callable[[str], dict[str, str]]) -> bytes:
    """A bare protocol login: CONNECT with `fields(nonce)`, then PING; the server's first answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        info = json.loads((await reader.readline()).split(b" ", 1)[1])
        connect = {"verbose": False, "pedantic": False, "protocol": 1, **fields(info["nonce"])}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_a_login_must_sign_this_connections_nonce_with_the_claimed_keys_seed(
        server: NatsServer, auth: Auth) -> None:
    """The server sends a fresh nonce per connection and checks its signature against the public
    key the client claims: another user's seed, a replayed signature or no signature all fail."""
    alice, bob = auth.seeds["alice"], auth.seeds["bob"]
    assert await raw_login(server, lambda nonce: connect_fields(alice, nonce)) == b"PONG\r\n"
    as_alice_signed_by_bob = lambda nonce: {**connect_fields(bob, nonce), "nkey": auth.nkeys["alice"]}  # noqa: E731
    replayed = connect_fields(alice, "an earlier connection's nonce")
    attempts = [as_alice_signed_by_bob, lambda nonce: replayed,
                lambda nonce: {"nkey": auth.nkeys["alice"]},  # the public key alone
                lambda nonce: {"user": "alice", "pass": alice}]  # the seed as a password
    for fields in attempts:
        assert (await raw_login(server, fields)).startswith(b"-ERR 'Authorization Violation'")


async def test_credentials_and_server_config_are_private(auth: Auth, server: NatsServer, tmp_path: Path) -> None:
    files = [*auth.creds_dir.iterdir(), server.config_path()]
    assert len(files) == 2 * len(auth.users) + 1  # <user>.json and <user>.nk each
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for user in auth.users:  # the seed file: one line, the user's seed, as standard clients read it
        assert auth.seed_path(user).read_text() == auth.seeds[user] + "\n" == auth.creds(user).seed + "\n"
    assert stat.S_IMODE(auth.run_dir.stat().st_mode) == 0o700
    loose = tmp_path / "loose.json"
    loose.write_text(auth.creds_path("alice").read_text())
    os.chmod(loose, 0o644)
    with pytest.raises(PermissionError):
        load_creds(loose)
    creds = auth.creds("agent-a")
    assert (creds.user, creds.role, creds.inbox_prefix, creds.handback_prefix) == (
        "agent-a", "agent", "_INBOX_agent.a", "_HANDBACK.agent.a")
