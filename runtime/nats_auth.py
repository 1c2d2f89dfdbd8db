"""NATS users and subject permissions for a deployment: one user per role (coordinator, shard,
operator, one per agent, one per client), each an NKey (ed25519; nats-server's standard public-key
login), least-privilege publish/subscribe lists, a per-user inbox prefix, and the nats-server
configuration that enforces them.

`Auth.create(deployment, run_dir)` draws one NKey per user and writes its seed (the private key)
only into that user's files, both mode 0600: `<run_dir>/creds/<user>.json` (ours: seed, role,
inbox prefix, ...) and `<run_dir>/creds/<user>.nk` (the seed line alone, which standard NATS
clients and the `nats` CLI read). `auth.server_config(...)` renders a server's config: it lists
public keys only, so it holds no secret. Routes between servers cannot log in with NKeys; their
password is drawn per cluster and reaches the servers through their environment
(`auth.server_env(...)`), never a file. A role finds its credentials through
`$SYMPHONY_NATS_CREDS` (a path, never the seed itself), so nothing secret is on a command line.

Reply namespaces: every user has an inbox prefix it alone may subscribe under:
`_INBOX_coordinator`, `_INBOX_shard`, `_INBOX_operator`, `_INBOX_agent.<id>`,
`_INBOX_client.<name>`. Shards and agents answer clients directly, so they may publish under
`_INBOX_client.>`; NATS cannot bind a publisher to the inboxes its plans name, so what is enforced
is the namespace: no agent can publish into a shard's, coordinator's or operator's inbox. A
request handed back by a shard or agent is re-sent with a reply under `_HANDBACK.<holder>` (its
answer is forwarded to the client), which shards and agents may also publish under.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import nkeys

from schemas.control import LEADER_BUCKET, MEMBERS_BUCKET, STATE_BUCKET

if TYPE_CHECKING:
    from runtime.cluster_config import ClusterConfig

CREDS_ENV = "SYMPHONY_NATS_CREDS"
LOCAL_CREDS_DIR = os.path.expanduser("~/.symphony/nats-creds")  # per URL: {"url", "creds_dir"} of `symphony up`

# Plans carry their requests' bodies: a batch of small bodies must fit one message. A client body
# is still capped lower by the shard (`body_bytes_max`, 413 beyond it).
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_PENDING = 64 * 1024 * 1024  # per connection, bytes; must be at least max_payload
MAX_CONNECTIONS = 4096
MAX_SUBSCRIPTIONS = 10_000  # per connection
MAX_CONTROL_LINE = 4096
LOG_FILE_BYTES = 16 * 1024 * 1024

BUCKETS = (STATE_BUCKET, MEMBERS_BUCKET, LEADER_BUCKET)
OPS_SCALE_SUBJECT = "symphony.ops.scale"  # `symphony scale` -> the `symphony up` process (any prefix)
HANDBACK_NAMESPACE = "_HANDBACK"
CLIENT_INBOXES = "_INBOX_client"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


ROUTE_PASSWORD_ENV = "SYMPHONY_NATS_ROUTE_PASSWORD"  # the routes' password, in the servers' environment
ROUTE_URL_ENV = "SYMPHONY_NATS_ROUTE_"  # + the route's port: its URL with the password


class Creds(msgspec.Struct, frozen=True, kw_only=True):
    """What a process needs to connect as one user. The file is 0600; `seed` never leaves it (and
    the user's `.nk` file beside it)."""

    user: str
    seed: str  # the user's NKey seed, "SU...": the private key that signs the server's nonce
    nkey: str  # its public key, "U...": what the server config lists (and its log names)
    role: str  # coordinator | shard | agent | operator | client
    inbox_prefix: str
    handback_prefix: str = ""  # shards and agents: the reply namespace of their hand-backs
    tls_ca: str = ""  # CA that signed the server's certificate (a tls:// server)
    tls_cert: str = ""  # client certificate, when the server verifies clients
    tls_key: str = ""


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key; `ca` verifies it (clients get its path). With
    `verify_clients` the server also asks clients for a certificate signed by `ca`."""

    cert: str
    key: str
    ca: str = ""
    verify_clients: bool = False


@dataclass(frozen=True)
class Deployment:
    """Who connects. `agents` maps each agent id to its slot ids (each agent its own user,
    subscribing only its slots' plan subjects); empty: one shared `agent` user for any id."""

    prefix: str = "symphony"
    agents: dict[str, tuple[str, ...]] = field(default_factory=dict)
    clients: tuple[str, ...] = ("client",)
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        for name in (self.prefix, *self.agents, *self.clients):
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: names are letters, digits, '_' and '-'")
        if not self.clients:
            raise ValueError("at least one client user")
        if len(set(self.clients)) != len(self.clients):
            raise ValueError("client names must be unique")
        taken = {"coordinator", "shard", "operator", "agent", "route"} | {f"agent-{a}" for a in self.agents}
        if taken & set(self.clients) or any(c.startswith("agent-") for c in self.clients):
            raise ValueError(f"client names cannot be role users ({', '.join(sorted(taken))}, agent-*)")


def deployment_for(config: ClusterConfig, clients: Sequence[str] = ("client",),
                   tls: TlsFiles | None = None) -> Deployment:
    """The users a cluster config needs: one per agent (its slots), the given clients."""
    return Deployment(prefix=config.subject_prefix,
                      agents={a.id: tuple(s.id for s in a.slots) for a in config.agents},
                      clients=tuple(clients), tls=tls)


@dataclass(frozen=True)
class UserPermissions:
    user: str
    role: str
    inbox_prefix: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    handback_prefix: str = ""
    # Replies to requests it received, without a publish grant on the requester's inbox. Off for
    # shards: the server tracks every delivered message with a reply (each client request), and
    # past 4096 outstanding entries it prunes the whole map on every delivery.
    allow_responses: str | None = None  # how long a reply stays allowed, e.g. "1m"


# ---- JetStream KV: exact API subjects per bucket -------------------------------------------

def kv_open(bucket: str) -> list[str]:
    return [f"$JS.API.STREAM.INFO.KV_{bucket}"]


def kv_create(bucket: str) -> list[str]:
    return [f"$JS.API.STREAM.CREATE.KV_{bucket}"]


def kv_read(bucket: str) -> list[str]:
    """get (direct or not) and keys()/watch (an ordered push consumer on the user's own inbox,
    with flow control replies)."""
    stream = f"KV_{bucket}"
    return [f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.FC.{stream}.>"]


def kv_write(bucket: str, keys: Iterable[str] = (">",)) -> list[str]:
    """put, create, update, delete of these keys (wildcards allowed): a publish to `$KV.<b>.<key>`."""
    return [f"$KV.{bucket}.{key}" for key in keys]


def _services(name: str) -> list[str]:
    """What nats.micro subscribes for a service: `$SRV.<verb>`, `.<name>`, `.<name>.<id>`."""
    return ["$SRV.*", f"$SRV.*.{name}", f"$SRV.*.{name}.*"]


def role_permissions(deployment: Deployment) -> list[UserPermissions]:
    p = deployment.prefix
    answer_clients = [f"{CLIENT_INBOXES}.>", f"{HANDBACK_NAMESPACE}.>"]
    users = [
        UserPermissions(
            user="coordinator", role="coordinator", inbox_prefix="_INBOX_coordinator",
            publish=tuple(s for b in BUCKETS for s in kv_open(b) + kv_create(b) + kv_read(b) + kv_write(b)),
            subscribe=("_INBOX_coordinator.>", f"{p}.coordinator.*.status", *_services("symphony-coordinator")),
            allow_responses="1m",
        ),
        UserPermissions(
            user="shard", role="shard", inbox_prefix="_INBOX_shard", handback_prefix=f"{HANDBACK_NAMESPACE}.shard",
            publish=(f"{p}.slot.*.plan", f"{p}.agent.*.info", f"{p}.agent.*.claim", f"{p}.infer.*",
                     *answer_clients, "_INBOX_operator.>",  # meta/status/$SRV replies (no allow_responses)
                     # a shard pings its own status endpoint to check the server is responsive
                     # before it declares a slot lost (shard/service/shard.py)
                     f"{p}.shard.*.status", "_INBOX_shard.>",
                     *(s for b in BUCKETS for s in kv_open(b)), *kv_read(STATE_BUCKET), *kv_read(MEMBERS_BUCKET),
                     *kv_write(MEMBERS_BUCKET, ["shard.*"])),
            subscribe=("_INBOX_shard.>", f"{HANDBACK_NAMESPACE}.shard.>", f"{p}.infer.*", f"{p}.infer_many.*",
                       f"{p}.meta", f"{p}.meta.*", f"{p}.stats", f"{p}.stats.*",
                       f"{p}.shard.*.done", f"{p}.shard.*.status", *_services("symphony-shard")),
        ),
        UserPermissions(
            user="operator", role="operator", inbox_prefix="_INBOX_operator",
            publish=("$SRV.>", f"{p}.shard.*.status", f"{p}.agent.*.status", f"{p}.coordinator.*.status",
                     f"{p}.meta", f"{p}.meta.*", OPS_SCALE_SUBJECT, "$JS.API.INFO",
                     *(s for b in BUCKETS for s in kv_open(b)), *kv_read(STATE_BUCKET), *kv_read(MEMBERS_BUCKET),
                     *kv_write(STATE_BUCKET, ["drain.*"])),
            subscribe=("_INBOX_operator.>", OPS_SCALE_SUBJECT),  # `symphony up` answers `symphony scale`
            allow_responses="5m",  # a scale request waits for drains
        ),
    ]
    agents: dict[str, tuple[str, ...] | None] = dict(deployment.agents) or {"": None}
    for agent_id, slots in agents.items():
        user = f"agent-{agent_id}" if agent_id else "agent"
        me = agent_id or "*"
        inbox = f"_INBOX_agent.{agent_id}" if agent_id else "_INBOX_agent"
        plans = [f"{p}.slot.{s}.plan" for s in slots] if slots is not None else [f"{p}.slot.*.plan"]
        users.append(UserPermissions(
            user=user, role="agent", inbox_prefix=inbox,
            handback_prefix=f"{HANDBACK_NAMESPACE}.agent.{agent_id}" if agent_id else f"{HANDBACK_NAMESPACE}.agent",
            publish=(f"{p}.shard.*.done", f"{p}.infer.*", *answer_clients,
                     *(s for b in BUCKETS for s in kv_open(b)),
                     *kv_write(STATE_BUCKET, [f"profiles.*.{me}"]), *kv_write(MEMBERS_BUCKET, [f"agent.{me}"])),
            subscribe=(f"{inbox}.>", f"{HANDBACK_NAMESPACE}.agent.{agent_id}.>" if agent_id
                       else f"{HANDBACK_NAMESPACE}.agent.>", *plans, f"{p}.agent.{me}.*", f"{p}.stats", f"{p}.stats.*",
                       *_services("symphony-agent")),
            allow_responses="1m",  # info and claim requests from shards, status from the operator
        ))
    for name in deployment.clients:
        inbox = f"{CLIENT_INBOXES}.{name}"
        users.append(UserPermissions(
            user=name, role="client", inbox_prefix=inbox,
            publish=(f"{p}.infer.*", f"{p}.meta", f"{p}.meta.*", f"{p}.infer_many.*", f"{p}.stats", f"{p}.stats.*"),
            subscribe=(f"{inbox}.>",)))
    return users


# ---- the configuration file -----------------------------------------------------------------

def _q(value: str) -> str:
    return json.dumps(value)  # a double-quoted string is valid in nats-server's config syntax


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def new_seed() -> str:
    """A fresh user NKey seed ("SU...") from 32 random bytes."""
    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    """The public key ("U...") of a user seed."""
    return nkeys.from_seed(bytearray(seed.encode())).public_key.decode()


def connect_fields(seed: str, nonce: str) -> dict[str, str]:
    """The CONNECT fields of an NKey login (for a raw protocol client): the public key and the
    nonce from the server's INFO signed with the seed (base64url, unpadded, as nats.go sends it)."""
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        signature = base64.urlsafe_b64encode(pair.sign(nonce.encode())).rstrip(b"=").decode()
        return {"nkey": pair.public_key.decode(), "sig": signature}
    finally:
        pair.wipe()


def render_users(users: Sequence[UserPermissions], nkeys_of: dict[str, str]) -> str:
    """The users block: each user's public key (`nkeys_of`: user -> "U..."), never a secret."""
    lines = ["authorization {", "  timeout: 2", "  users: ["]
    for u in users:
        lines.append(f"    # {u.user}")  # the server names a user by its key (logs, violations)
        lines.append(f"    {{ nkey: {_q(nkeys_of[u.user])}, permissions: {{")
        lines.append(f"        publish: {{ allow: {_list(u.publish)} }}")
        lines.append(f"        subscribe: {{ allow: {_list(u.subscribe)} }}")
        if u.allow_responses:
            lines.append(f"        allow_responses: {{ max: 1, expires: {_q(u.allow_responses)} }}")
        lines.append("    } }")
    lines += ["  ]", "}"]
    return "\n".join(lines)


def render_server_config(
    *, host: str, port: int, store_dir: str | None, users_block: str = "", tls: TlsFiles | None = None,
    server_name: str = "", cluster_port: int | None = None, routes: Sequence[int] = (),
    route_user: str = "", max_payload: int = MAX_PAYLOAD,
    max_connections: int = MAX_CONNECTIONS, log_file: str = "",
) -> str:
    """One nats-server's config. Without `users_block` it is open (no authentication). With
    `route_user` the routes authenticate with a password the server reads from its environment
    (`route_env`): the config names only the variables."""
    lines = [
        "# generated by symphony (runtime/nats_auth.py); no secrets in it: users are NKey public keys",
        f"host: {_q(host)}", f"port: {port}",
        f"max_payload: {max_payload}", f"max_pending: {max(MAX_PENDING, max_payload)}",
        f"max_connections: {max_connections}", f"max_subscriptions: {MAX_SUBSCRIPTIONS}",
        f"max_control_line: {MAX_CONTROL_LINE}",
        # A paused (SIGSTOP) or cut-off client keeps its subscriptions, and a queue-group member
        # its share of the traffic, until the server finds it stale: 3 unanswered pings 2 s apart
        # instead of the default 2 minutes x 2. Not shorter: a busy event loop must not be cut off.
        'ping_interval: "2s"', "ping_max: 3",
    ]
    if server_name:
        lines.append(f"server_name: {_q(server_name)}")
    if log_file:  # capped: every permission violation is logged
        lines += [f"log_file: {_q(log_file)}", f"logfile_size_limit: {LOG_FILE_BYTES}", "logfile_max_num: 2"]
    if store_dir is not None:
        # Control state (assignment, lease, heartbeats) is small; fsync every write so a host
        # crash loses none of it on a single server (the default syncs every 2 minutes).
        lines.append(f"jetstream {{ store_dir: {_q(store_dir)}, sync_interval: always }}")
    if tls is not None:
        lines.append("tls {")
        lines += [f"  cert_file: {_q(tls.cert)}", f"  key_file: {_q(tls.key)}", "  timeout: 2"]
        if tls.ca:
            lines.append(f"  ca_file: {_q(tls.ca)}")
        if tls.verify_clients:
            lines.append("  verify: true")
        lines.append("}")
    if cluster_port is not None:
        lines.append("cluster {")
        lines += ['  name: "symphony"', f"  listen: {_q(f'{host}:{cluster_port}')}"]
        if route_user:
            # NKeys are for clients; a route logs in with a user and password, given to this server
            # in its environment. An explicit route carries them in its URL: the whole URL is a variable.
            lines.append("  # the routes' credentials are in this server's environment, not here")
            lines.append(f"  authorization {{ user: {_q(route_user)}, password: ${ROUTE_PASSWORD_ENV}, timeout: 2 }}")
        if tls is not None:  # routes verify each other with the same certificate and CA
            lines.append(f"  tls {{ cert_file: {_q(tls.cert)}, key_file: {_q(tls.key)}"
                         + (f", ca_file: {_q(tls.ca)}" if tls.ca else "") + ", timeout: 2 }")
        if route_user:
            lines.append(f"  # routes: {', '.join(f'{host}:{r}' for r in routes)}")
            lines.append("  routes: [" + ", ".join(f"${ROUTE_URL_ENV}{r}" for r in routes) + "]")
        else:
            lines.append("  routes: " + _list(f"nats-route://{host}:{r}" for r in routes))
        lines.append("}")
    if users_block:
        lines.append(users_block)
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Create (or replace) a file readable by its owner only, never world-readable in between."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Auth:
    """One cluster's users, their NKeys (drawn per cluster), their credentials files and the
    routes' password (drawn per cluster, kept in memory and handed to the servers it starts)."""

    def __init__(self, deployment: Deployment, run_dir: Path, seeds: dict[str, str], route_password: str) -> None:
        self.deployment = deployment
        self.run_dir = Path(run_dir)
        self.users = {u.user: u for u in role_permissions(deployment)}
        self.seeds = seeds
        self.nkeys = {user: public_key(seed) for user, seed in seeds.items()}
        self.route_user = "route"
        self.route_password = route_password

    @classmethod
    def create(cls, deployment: Deployment, run_dir: str | Path) -> Auth:
        seeds = {u.user: new_seed() for u in role_permissions(deployment)}
        auth = cls(deployment, Path(run_dir), seeds, secrets.token_urlsafe(24))
        auth.write_creds()
        return auth

    @property
    def creds_dir(self) -> Path:
        return self.run_dir / "creds"

    def write_creds(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        tls = self.deployment.tls
        for user in self.users.values():
            creds = Creds(user=user.user, seed=self.seeds[user.user], nkey=self.nkeys[user.user], role=user.role,
                          inbox_prefix=user.inbox_prefix, handback_prefix=user.handback_prefix,
                          tls_ca=(tls.ca if tls is not None else ""))
            write_private(self.creds_path(user.user), msgspec.json.encode(creds).decode() + "\n")
            write_private(self.seed_path(user.user), self.seeds[user.user] + "\n")

    def creds_path(self, user: str) -> Path:
        """`<user>.json`: our credentials file (seed, role, inbox prefix, TLS CA)."""
        if user not in self.users:
            raise KeyError(f"no NATS user {user!r} (users: {', '.join(sorted(self.users))})")
        return self.creds_dir / f"{user}.json"

    def seed_path(self, user: str) -> Path:
        """`<user>.nk`: the seed alone, for standard NATS clients (`nats --nkey`, nats.py
        `nkeys_seed=`, nats.go `NkeyOptionFromSeed`); they also need the user's inbox prefix."""
        return self.creds_path(user).with_suffix(".nk")

    def agent_user(self, agent_id: str) -> str:
        return f"agent-{agent_id}" if f"agent-{agent_id}" in self.users else "agent"

    def creds(self, user: str) -> Creds:
        return load_creds(self.creds_path(user))

    def users_block(self) -> str:
        return render_users(list(self.users.values()), self.nkeys)

    def server_config(self, **kwargs: object) -> str:
        """See render_server_config; this adds the users, TLS and the routes' user."""
        return render_server_config(users_block=self.users_block(), tls=self.deployment.tls,
                                    route_user=self.route_user, **kwargs)  # type: ignore[arg-type]

    def route_env(self, host: str, routes: Sequence[int]) -> dict[str, str]:
        """The environment a server of `server_config(..., routes=routes)` needs: the routes'
        password, and each route's URL with it (a config cannot splice a variable into a string)."""
        if not routes:
            return {}
        env = {ROUTE_PASSWORD_ENV: self.route_password}
        for port in routes:
            env[f"{ROUTE_URL_ENV}{port}"] = f"nats-route://{self.route_user}:{self.route_password}@{host}:{port}"
        return env


def load_creds(path: str | Path) -> Creds:
    path = Path(path)
    mode = path.stat().st_mode & 0o077
    if mode:
        raise PermissionError(f"{path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}): chmod 600 it")
    return msgspec.json.decode(path.read_bytes(), type=Creds)


def creds_from_env() -> Creds | None:
    path = os.environ.get(CREDS_ENV)
    return load_creds(path) if path else None


_recorded: dict[str, Path] = {}  # url -> creds folder, for callers in the process that started it


def _record_path(url: str) -> Path:
    return Path(LOCAL_CREDS_DIR) / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".json")


def record_local(url: str, auth: Auth | None) -> None:
    """Where a local cluster's credentials are, for CLI commands run against the same URL: one
    record per URL (several clusters may run at once), and in this process."""
    if auth is None:
        return
    _recorded[url] = auth.creds_dir
    if Path(LOCAL_CREDS_DIR).is_file():  # the single record of an earlier version
        Path(LOCAL_CREDS_DIR).unlink()
    write_private(_record_path(url), json.dumps({"url": url, "creds_dir": str(auth.creds_dir)}) + "\n")


def forget_local(url: str) -> None:
    _recorded.pop(url, None)
    _record_path(url).unlink(missing_ok=True)


def local_creds(url: str, user: str) -> Creds | None:
    """A local cluster's credentials for `user`, only when `url` is that cluster's URL."""
    try:
        creds_dir = _recorded.get(url)
        if creds_dir is None:
            record = json.loads(_record_path(url).read_text())
            if record["url"] != url:
                return None
            creds_dir = Path(record["creds_dir"])
        path = creds_dir / f"{user}.json"
        return load_creds(path) if path.exists() else None
    except (OSError, ValueError, KeyError):
        return None
