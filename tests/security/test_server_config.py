"""The generated nats-server configuration: limits, durable JetStream, TLS and route auth, each
checked in the text and, where cheap, by the real server (`nats-server -t` parses a config; a
TLS server is started when `openssl` can make a self-signed certificate)."""

from __future__ import annotations

import asyncio
import re
import shutil
import stat
import subprocess
from pathlib import Path

import nats
import pytest

from ops.cli import main
from runtime.connect import NatsUnreachable, connect_client
from runtime.nats_auth import (
    MAX_PAYLOAD,
    ROUTE_PASSWORD_ENV,
    ROUTE_URL_ENV,
    Auth,
    Deployment,
    TlsFiles,
    public_key,
    role_permissions,
)
from runtime.nats_server import NatsCluster, NatsServer, nats_server_binary


def server_accepts(config: str, tmp_path: Path) -> None:
    path = tmp_path / "server.conf"
    path.write_text(config)
    checked = subprocess.run([nats_server_binary(), "-c", str(path), "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_the_config_sets_limits_durable_jetstream_and_every_user(tmp_path: Path) -> None:
    auth = Auth.create(Deployment(agents={"a": ("a0",)}, clients=("alice", "bob")), tmp_path / "run")
    config = auth.server_config(host="127.0.0.1", port=4222, store_dir=str(tmp_path / "js"))
    assert f"max_payload: {MAX_PAYLOAD}" in config and "max_connections:" in config
    assert "sync_interval: always" in config
    for user in ("coordinator", "shard", "operator", "agent-a", "alice", "bob"):
        assert f'# {user}\n    {{ nkey: "{auth.nkeys[user]}", permissions: {{' in config
    server_accepts(config, tmp_path)


def assert_no_secret(config: str, auth: Auth) -> None:
    """Public keys only: no password, no seed (ours or any), not the routes' password."""
    assert "password" not in auth.users_block() and "pass:" not in config
    assert not re.search(r"\bS[UAONC][A-Z2-7]{50,}", config)  # an NKey seed of any kind
    for seed in auth.seeds.values():
        assert seed not in config and seed[2:20] not in config
    assert auth.route_password not in config
    for user, nkey in auth.nkeys.items():
        assert nkey == public_key(auth.seeds[user]) and nkey.startswith("U") and nkey in config


def test_no_generated_server_config_holds_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth = Auth.create(Deployment(agents={"a": ("a0",)}, clients=("alice", "bob")), tmp_path / "run")
    single = auth.server_config(host="127.0.0.1", port=4222, store_dir=str(tmp_path / "js"))
    routed = [auth.server_config(host="127.0.0.1", port=4222 + k, store_dir=None, server_name=f"n{k}",
                                 cluster_port=6222 + k, routes=[6222 + j for j in range(3) if j != k])
              for k in range(3)]
    for config in (single, *routed):
        assert_no_secret(config, auth)
    assert "password" not in single  # the only password left is the routes', named by its variable
    for config in routed:
        assert config.count("password") == 1 and f"password: ${ROUTE_PASSWORD_ENV}," in config
    # `symphony nats-auth` (several hosts) writes the same
    main(["nats-auth", "--out", str(tmp_path / "out"), "--client", "carol"])  # the demo cluster config
    written = (tmp_path / "out" / "nats-server.conf").read_text()
    assert "password" not in written and not re.search(r"\bS[UAONC][A-Z2-7]{50,}", written)
    for seed_file in (tmp_path / "out" / "creds").glob("*.nk"):
        seed = seed_file.read_text().strip()
        assert seed.startswith("SU") and seed not in written and public_key(seed) in written
        assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    capsys.readouterr()


def test_three_servers_share_the_users_and_authenticate_their_routes(tmp_path: Path) -> None:
    tls = TlsFiles(cert="/etc/symphony/server.pem", key="/etc/symphony/server.key", ca="/etc/symphony/ca.pem",
                   verify_clients=True)
    auth = Auth.create(Deployment(tls=tls), tmp_path / "run")
    configs = [auth.server_config(host="127.0.0.1", port=4222 + k, store_dir=f"/tmp/js{k}", server_name=f"n{k}",
                                  cluster_port=6222 + k, routes=[6222 + j for j in range(3) if j != k])
               for k in range(3)]
    route = f'authorization {{ user: "route", password: ${ROUTE_PASSWORD_ENV}, timeout: 2 }}'
    for k, config in enumerate(configs):
        assert route in config
        others = [6222 + j for j in range(3) if j != k]
        assert "routes: [" + ", ".join(f"${ROUTE_URL_ENV}{port}" for port in others) + "]" in config
        env = auth.route_env("127.0.0.1", others)
        assert env[ROUTE_PASSWORD_ENV] == auth.route_password
        assert env[f"{ROUTE_URL_ENV}{others[0]}"] == f"nats-route://route:{auth.route_password}@127.0.0.1:{others[0]}"
        assert auth.users_block() in config  # the same users on every server
        assert 'ca_file: "/etc/symphony/ca.pem"' in config and "verify: true" in config
        assert config.count("cert_file") == 2  # clients and routes
    assert auth.creds("client").tls_ca == "/etc/symphony/ca.pem"


def test_permission_lists_stay_least_privilege() -> None:
    users = {u.user: u for u in role_permissions(Deployment(agents={"a": ("a0",)}, clients=("alice",)))}
    assert users["alice"].publish == ("symphony.infer.*", "symphony.meta", "symphony.meta.*",
                                      "symphony.infer_many.*", "symphony.stats", "symphony.stats.*")
    assert users["alice"].subscribe == ("_INBOX_client.alice.>",)
    assert users["alice"].allow_responses is None
    everyone_but_coordinator = [u for name, u in users.items() if name != "coordinator"]
    assert not any("STREAM.CREATE" in s for u in everyone_but_coordinator for s in u.publish)
    assert not any(s.endswith(".plan") for u in users.values() if u.role != "shard" for s in u.publish)
    assert not any(s in (">", "$JS.API.>", "$KV.>") for u in users.values() for s in u.publish + u.subscribe)
    assert users["shard"].allow_responses is None  # tracking every client request would cost the server
    agent = users["agent-a"]
    assert "symphony.slot.a0.plan" in agent.subscribe and "symphony.slot.*.plan" not in agent.subscribe
    for role in ("shard", "agent-a"):  # every shard and agent answers statistics requests (runtime/stats.py)
        assert {"symphony.stats", "symphony.stats.*"} <= set(users[role].subscribe), role
    assert not any(s.startswith(("_INBOX_shard", "_INBOX_operator", "_INBOX_coordinator")) for s in agent.publish)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")
@pytest.mark.asyncio
async def test_a_tls_server_takes_tls_clients_with_the_ca_only(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    auth = Auth.create(Deployment(tls=TlsFiles(cert=str(cert), key=str(key), ca=str(cert))), tmp_path / "run")
    with NatsServer(auth=auth) as server:
        assert server.url.startswith("tls://")
        nc = await connect_client(server.url, creds=auth.creds_path("client"))
        try:
            reply = asyncio.ensure_future(nc.request("symphony.meta", b"", timeout=0.5))
            with pytest.raises(nats.errors.NoRespondersError):  # connected and allowed; nobody serves it
                await reply
        finally:
            await nc.close()
        no_ca = tmp_path / "no-ca.json"
        no_ca.write_text(auth.creds_path("client").read_text().replace(str(cert), ""))
        no_ca.chmod(0o600)
        with pytest.raises(NatsUnreachable):  # the self-signed certificate is not trusted without the CA
            await connect_client(server.url, creds=no_ca)


@pytest.mark.asyncio
async def test_routed_servers_log_in_with_the_password_from_their_environment(tmp_path: Path) -> None:
    """Three servers whose configs name the routes' password only by variable: they route (a
    reply published on one server reaches the client on another), and each config is secret-free."""
    auth = Auth.create(Deployment(clients=("alice",)), tmp_path / "run")
    with NatsCluster(3, auth=auth, jetstream=False) as cluster:
        for server in cluster.servers:
            assert_no_secret(server.config_path().read_text(), auth)
        alice = await connect_client(cluster.servers[0].url, creds=auth.creds_path("alice"))
        shard = await connect_client(cluster.servers[2].url, creds=auth.creds_path("shard"), user="shard")
        try:
            got: asyncio.Queue = asyncio.Queue()
            await alice.subscribe("_INBOX_client.alice.x", cb=got.put)
            await alice.flush()
            for _ in range(100):  # the subscription's interest crosses the routes shortly
                await shard.publish("_INBOX_client.alice.x", b"across")
                try:
                    msg = await asyncio.wait_for(got.get(), 0.1)
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("no message crossed the routes")
            assert msg.data == b"across"
        finally:
            await alice.close()
            await shard.close()
        assert all("authentication error" not in s.log() for s in cluster.servers)
