"""CLI commands for running and calling the live system: up, agent, shard, infer, models, stats."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import nats
import numpy as np

from runtime.client import SymphonyClient, default_nats_url
from runtime.cluster_config import DEMO_CONFIG
from runtime.connect import connect_client
from runtime.nats_auth import OPS_SCALE_SUBJECT
from schemas.model import validate_model_name

CREDS_HELP = "NATS credentials file (else $SYMPHONY_NATS_CREDS, else those `symphony up` recorded for the URL)"


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    _add_up_parser(subparsers)

    auth = subparsers.add_parser("nats-auth", help="write a nats-server config with users and permissions, and "
                                                   "one credentials file per role, for a deployment")
    auth.add_argument("--config", default=str(DEMO_CONFIG))
    auth.add_argument("--out", required=True, help="folder for nats-server.conf and creds/ (all 0600)")
    auth.add_argument("--client", action="append", default=None, metavar="NAME")
    auth.add_argument("--host", default="0.0.0.0")
    auth.add_argument("--port", type=int, default=4222)
    auth.add_argument("--store-dir", default="/var/lib/nats/jetstream")
    auth.add_argument("--tls-cert", default=None)
    auth.add_argument("--tls-key", default=None)
    auth.add_argument("--tls-ca", default=None)
    auth.add_argument("--tls-verify-clients", action="store_true",
                      help="require client certificates signed by --tls-ca")
    auth.set_defaults(handler=_nats_auth)

    for role in ("agent", "shard", "coordinator"):
        p = subparsers.add_parser(role, help=f"run one {role} against a NATS server")
        p.add_argument("--config", default=str(DEMO_CONFIG))
        p.add_argument("--id", required=True)
        p.add_argument("--nats-url", default=None)
        p.set_defaults(handler=_role, role=role)

    _add_gateway_parser(subparsers)

    infer = subparsers.add_parser("infer", help="send one request and print status, timings and output")
    infer.add_argument("model")
    source = infer.add_mutually_exclusive_group()
    source.add_argument("--input", help='JSON body, e.g. \'{"inputs": [...]}\'')
    source.add_argument("--random", action="store_true", help="random valid inputs from the model's metadata")
    infer.add_argument("--slo-ms", type=float, default=None)
    infer.add_argument("--nats-url", default=None)
    infer.add_argument("--timeout", type=float, default=10.0)
    infer.add_argument("--creds", default=None, help=CREDS_HELP)
    infer.set_defaults(handler=_infer)

    demo = subparsers.add_parser("demo", help="up the demo cluster, send load, print a summary, shut down")
    demo.add_argument("--seconds", type=float, default=20.0)
    demo.set_defaults(handler=lambda args: __import__("ops.demo", fromlist=["main"]).main(args.seconds))

    scale = subparsers.add_parser("scale", help="change the number of shard processes of a running `symphony up`")
    scale.add_argument("what", choices=["shards"])
    scale.add_argument("count", type=int)
    scale.add_argument("--nats-url", default=None)
    scale.add_argument("--creds", default=None, help=CREDS_HELP)
    scale.set_defaults(handler=_scale)

    drain = subparsers.add_parser("drain", help="move a shard's models and slots away (coordinated clusters)")
    drain.add_argument("shard")
    drain.add_argument("--undo", action="store_true", help="let the shard take models again")
    drain.add_argument("--timeout", type=float, default=60.0)
    drain.add_argument("--nats-url", default=None)
    drain.add_argument("--creds", default=None, help=CREDS_HELP)
    drain.set_defaults(handler=_drain)

    status = subparsers.add_parser("status", help="coordinators, shards and agents found through the NATS services "
                                                  "API, with their metrics URLs")
    status.add_argument("--nats-url", default=None)
    status.add_argument("--json", action="store_true")
    status.add_argument("--creds", default=None, help=CREDS_HELP)
    status.set_defaults(handler=_status)

    stats = subparsers.add_parser("stats", help="per-model inference statistics, cluster-wide, as Triton's "
                                                "statistics extension reports them (JSON)")
    stats.add_argument("model", nargs="?", default=None, help="one model (default: every model)")
    stats.add_argument("--wait", type=float, default=1.0, help="seconds to wait for members at most")
    stats.add_argument("--nats-url", default=None)
    stats.add_argument("--creds", default=None, help=CREDS_HELP)
    stats.set_defaults(handler=_stats)

    models = subparsers.add_parser("models", help="list the served models and their inputs")
    models.add_argument("--nats-url", default=None)
    models.add_argument("--creds", default=None, help=CREDS_HELP)
    models.set_defaults(handler=_models)


def _add_up_parser(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser("up", help="run a local cluster (embedded nats-server unless --nats-url)")
    up.add_argument("--config", default=str(DEMO_CONFIG))
    up.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    up.add_argument("--logs", default="results/cluster-logs", help="folder for the processes' logs")
    up.add_argument("--nats-cluster", type=int, default=0, metavar="N",
                    help="start N routed nats-servers (JetStream clustered, KV with N replicas) instead of one")
    up.add_argument("--no-auth", action="store_true", help="start the server(s) without NATS users (open)")
    up.add_argument("--client", action="append", default=None, metavar="NAME",
                    help="a client NATS user (repeatable; default: one user `client`)")
    up.add_argument("--run-dir", default=None,
                    help="where credentials and server configs go (default: a private temp dir)")
    up.add_argument("--tls-cert", default=None, help="server certificate (PEM): clients connect with tls://")
    up.add_argument("--tls-key", default=None)
    up.add_argument("--tls-ca", default=None, help="CA that signed --tls-cert (given to clients to verify it)")
    up.add_argument("--autoscale", action="store_true",
                    help="run the autoscaler and act on it: start and stop agent processes as it decides "
                         "(needs a [coordinator] section; settings in [coordinator.autoscale])")
    up.add_argument("--cold-start", type=float, default=None, metavar="S",
                    help="with --autoscale: seconds before a started slot's agent is launched "
                         "(default: [coordinator.autoscale] cold_start_s)")
    up.add_argument("--no-gateway", action="store_true", help="start no OIP (KServe v2 / Triton) gateway")
    up.add_argument("--no-metrics", action="store_true",
                    help="serve no Prometheus endpoints but those the config fixes with metrics_port "
                         "(default: every role serves one on a free port; the URLs are printed)")
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime.cluster import LocalCluster
    from runtime.nats_auth import TlsFiles
    from runtime.status import metrics_lines

    tls = TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca or "") if args.tls_cert else None
    if args.cold_start is not None and (not args.autoscale or args.cold_start < 0):
        raise SystemExit("--cold-start takes a number of seconds >= 0, and needs --autoscale")
    try:
        cluster = LocalCluster(args.config, args.nats_url, log_dir=Path(args.logs), nats_cluster=args.nats_cluster,
                               auth=not args.no_auth, clients=args.client or ("client",), tls=tls,
                               run_dir=Path(args.run_dir) if args.run_dir else None, autoscale=args.autoscale,
                               gateway=not args.no_gateway,
                               metrics=not args.no_metrics)
    except ValueError as error:
        raise SystemExit(str(error)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("starting (models compile and profile first; this can take a minute)...", flush=True)
        url = await cluster.start()
        ops_nc = await _serve_ops(cluster)
        actuator = asyncio.create_task(cluster.run_actuator(cold_start_s=args.cold_start)) if args.autoscale else None
        print(f"symphony is up at {url}  (export NATS_URL={url}); logs in {args.logs}; Ctrl-C stops it", flush=True)
        if cluster.gateway_addresses:
            gw = cluster.gateway_addresses
            print(f"gateway (Open Inference Protocol v2; tritonclient and KServe clients): {gw['http']}  {gw['grpc']}",
                  flush=True)
        if cluster.auth is not None:
            clients = ", ".join(str(cluster.creds_path(c)) for c in (args.client or ("client",)))
            print(f"NATS users on (NKeys): operator credentials {cluster.creds_path('operator')} (status, drain, "
                  f"scale), client credentials {clients} (infer, models); symphony commands on this host find "
                  "them, other programs: export SYMPHONY_NATS_CREDS=<file>", flush=True)
            for client in args.client or ("client",):  # for any NATS client (docs/protocol.md, Logging in)
                user = cluster.auth.users[client]
                print(f"client {client}: NKey seed file {cluster.auth.seed_path(client)}, inbox prefix "
                      f"{user.inbox_prefix}  (e.g. nats --server {url} --nkey {cluster.auth.seed_path(client)} "
                      f"--inbox-prefix {user.inbox_prefix} req symphony.meta '')", flush=True)
        print("\n".join(metrics_lines(await cluster.metrics_endpoints())), flush=True)
        while not stop.is_set():
            cluster.check_alive()
            if actuator is not None and actuator.done():
                actuator.result()  # the actuator failed: say why and stop
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        if actuator is not None:
            actuator.cancel()
            await asyncio.wait([actuator])
        await ops_nc.close()

    try:
        asyncio.run(main())
    finally:
        cluster.stop()
        print("stopped", flush=True)
    return 0


async def _serve_ops(cluster) -> nats.NATS:  # noqa: ANN001
    """`symphony scale` talks to the `up` process that owns the local processes."""
    import json as json_

    nc = await connect_client(cluster.url, "symphony-up", cluster.creds_path("operator"), user="operator")

    async def on_scale(msg) -> None:  # noqa: ANN001
        try:
            count = int(json_.loads(msg.data)["shards"])
            if count < 1:
                raise ValueError("at least one shard")
            if not cluster.config.dynamic and count != len(cluster.shard_ids()):
                raise ValueError("scaling needs a coordinator: add a [coordinator] section to the config")
            shards = await cluster.scale_shards(count)
            await msg.respond(json_.dumps({"shards": shards}).encode())
        except (ValueError, KeyError, TimeoutError) as error:
            await msg.respond(json_.dumps({"error": str(error)}).encode())

    await nc.subscribe(OPS_SCALE_SUBJECT, cb=on_scale)
    return nc


def _add_gateway_parser(subparsers: argparse._SubParsersAction) -> None:
    gateway = subparsers.add_parser("gateway", help="serve the Open Inference Protocol (KServe v2) over HTTP and "
                                                    "gRPC, for tritonclient and other OIP clients (docs/gateway.md)")
    gateway.add_argument("--nats-url", default=None)
    gateway.add_argument("--creds", default=None, help=CREDS_HELP)
    gateway.add_argument("--prefix", default=None, help="subject prefix (default: the --config's, else symphony)")
    gateway.add_argument("--config", default=None, help="a cluster config, for its subject prefix")
    gateway.add_argument("--host", default="127.0.0.1", help="address both doors bind (0.0.0.0: every interface)")
    gateway.add_argument("--http-port", type=int, default=8000, help="0: any free port")
    gateway.add_argument("--grpc-port", type=int, default=8001, help="0: any free port")
    gateway.add_argument("--metrics-port", type=int, default=0, help="Prometheus; 0: any free port, -1: none")
    gateway.add_argument("--linger-us", type=int, default=0,
                         help="wait this long for more requests before sending a batch (0: one event-loop turn)")
    gateway.add_argument("--address-file", default=None, help="write the bound addresses here as JSON")
    gateway.set_defaults(handler=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    from gateway.service import GatewaySettings
    from ops.roles import run_gateway
    from runtime.cluster_config import load_cluster_config

    prefix = args.prefix or (load_cluster_config(args.config).subject_prefix if args.config else "symphony")
    import uvloop  # the gateway's loop: a third more requests per CPU second than asyncio's (BENCHMARKS §13)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_gateway(GatewaySettings(
            nats_url=default_nats_url(args.nats_url), prefix=prefix, host=args.host, http_port=args.http_port,
            grpc_port=args.grpc_port, metrics_port=args.metrics_port, linger_us=args.linger_us, creds=args.creds,
            address_file=args.address_file)))
    return 0


def _role(args: argparse.Namespace) -> int:
    from ops.roles import run_agent, run_coordinator, run_shard

    runner = {"agent": run_agent, "shard": run_shard, "coordinator": run_coordinator}[args.role]
    asyncio.run(runner(args.config, args.id, default_nats_url(args.nats_url)))
    return 0


def _random_inputs(meta) -> dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng()
    arrays = {}
    for spec in meta.inputs:
        shape = [1, *spec.shape[1:]]
        if spec.datatype.startswith("INT"):
            arrays[spec.name] = rng.integers(0, 100, size=shape).astype(np.int32)
        else:
            arrays[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def _infer(args: argparse.Namespace) -> int:
    validate_model_name(args.model)  # before connecting: `symphony infer 'a.b'` says what a name may be

    async def main() -> int:
        client = await SymphonyClient.connect(args.nats_url, creds=args.creds)
        try:
            if args.input:
                body: bytes | dict = args.input.encode()
                result = await client.infer(args.model, body, slo_ms=args.slo_ms, content_type="application/json",
                                            timeout_s=args.timeout)
            else:
                try:
                    meta = await client.metadata(args.model)
                except nats.errors.NoRespondersError:
                    print(f"status 404: no shard serves model {args.model!r} (see `symphony models`)")
                    return 1
                result = await client.infer(args.model, _random_inputs(meta), slo_ms=args.slo_ms,
                                            timeout_s=args.timeout)
        finally:
            await client.close()
        print(f"status {result.status}" + (f": {result.reason}" if result.reason else ""))
        if result.ok:
            print(f"batch size {result.batch_size}, queue {result.queue_us / 1000:.2f} ms, "
                  f"compute {result.compute_us / 1000:.2f} ms")
            for name, array in result.outputs.items():
                print(f"{name} {list(array.shape)}: {np.array2string(array, precision=4, threshold=20)}")
        return 0 if result.ok else 1

    return asyncio.run(main())


def _models(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = await SymphonyClient.connect(args.nats_url, creds=args.creds)
        try:
            for name in await client.models():
                meta = await client.metadata(name)
                ins = ", ".join(f"{t.name} {t.datatype}{t.shape}" for t in meta.inputs)
                print(f"{name:<16} {meta.platform:<6} slo {meta.slo_ms:g} ms  max batch {meta.max_batch_size}  "
                      f"inputs: {ins}")
        finally:
            await client.close()
        return 0

    return asyncio.run(main())


def _stats(args: argparse.Namespace) -> int:
    """Prints `{"model_stats": [...]}`, Triton's JSON; members that did not answer go to stderr."""
    import msgspec

    if args.model is not None:
        validate_model_name(args.model)

    async def main() -> int:
        client = await SymphonyClient.connect(args.nats_url, creds=args.creds)
        try:
            gathered = await client.statistics(args.model, wait_s=args.wait)
        finally:
            await client.close()
        print(msgspec.json.format(msgspec.json.encode(gathered.response), indent=1).decode())
        if gathered.missing:
            print(f"no answer from {', '.join(gathered.missing)} within {args.wait:g} s", file=sys.stderr)
        if not gathered.answered:
            print("no shard or agent answered", file=sys.stderr)
        elif args.model is not None and not gathered.response.model_stats:
            print(f"no shard or agent hosts model {args.model!r} (see `symphony models`)", file=sys.stderr)
        return 0 if gathered.response.model_stats and not gathered.missing else 1

    return asyncio.run(main())


def _scale(args: argparse.Namespace) -> int:
    import json as json_

    async def main() -> int:
        nc = await connect_client(default_nats_url(args.nats_url), "symphony-scale", args.creds, user="operator")
        try:
            msg = await nc.request(OPS_SCALE_SUBJECT, json_.dumps({"shards": args.count}).encode(), timeout=120)
        except nats.errors.NoRespondersError:
            print("no `symphony up` is running a local cluster here (scale works on the local cluster)")
            return 1
        finally:
            await nc.close()
        reply = json_.loads(msg.data)
        print(reply.get("error") or f"shards now: {', '.join(reply['shards'])}")
        return 1 if "error" in reply else 0

    return asyncio.run(main())


def _drain(args: argparse.Namespace) -> int:
    from runtime.drain import drain_shard

    took = asyncio.run(drain_shard(default_nats_url(args.nats_url), args.shard, timeout_s=args.timeout,
                                   undo=args.undo, creds=args.creds))
    drained = f"{args.shard} drained in {took:.1f} s: it holds no models or slots"
    print(f"{args.shard} undrained" if args.undo else drained)
    return 0


def _status(args: argparse.Namespace) -> int:
    import msgspec

    from runtime.status import format_status, gather_status

    shards, agents, coordinators = asyncio.run(gather_status(default_nats_url(args.nats_url), creds=args.creds))
    if args.json:
        print(msgspec.json.encode({"shards": shards, "agents": agents, "coordinators": coordinators}).decode())
    else:
        print(format_status(shards, agents, coordinators))
    return 0


def _nats_auth(args: argparse.Namespace) -> int:
    """For a deployment on several hosts: one server config (add `server_name` and a `cluster`
    block per server for a NATS cluster; the users are the same on each) and the roles' files."""
    from pathlib import Path

    from runtime.cluster_config import load_cluster_config
    from runtime.nats_auth import Auth, TlsFiles, deployment_for, write_private

    tls = (TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca or "", verify_clients=args.tls_verify_clients)
           if args.tls_cert else None)
    deployment = deployment_for(load_cluster_config(args.config), args.client or ("client",), tls)
    auth = Auth.create(deployment, Path(args.out))
    conf = Path(args.out) / "nats-server.conf"
    write_private(conf, auth.server_config(host=args.host, port=args.port, store_dir=args.store_dir))
    print(f"wrote {conf} (public keys only) and, per user, <user>.json and <user>.nk (its NKey seed, for standard "
          f"NATS clients) in {auth.creds_dir}: give each role its own file (SYMPHONY_NATS_CREDS=<user>.json); "
          "every file is 0600. Routes between servers need credentials of their own (docs/operations.md, Security)")
    return 0


def _json(value: object) -> str:
    return json.dumps(value, indent=1)


if __name__ == "__main__":
    sys.exit(0)
