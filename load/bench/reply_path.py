"""Who should publish to client inboxes: the agent (A, today's design) or the shard (B)?

A, direct: the shard sends one batch plan (reply subjects + bodies) per batch to an agent, which
publishes each reply straight to the client's inbox and a small completion report to the shard.
Agents therefore need publish rights on the client inbox namespace.

B, forwarded: the plan carries bodies only; the agent sends all of a batch's replies back to the
shard in one message, and the shard publishes each one to the reply subject of the request it
received. The shard's user then has `allow_responses: true` (max one reply per received reply
subject) and no inbox grant, so the server itself enforces "exactly one reply per request", and
agents cannot publish to inboxes at all.

This measures what B costs: three processes per mode (client, shard, agent; nats-py callbacks)
on a real nats-server with those users and permissions, modes alternated A, B, A, B and medians
reported, and the two permission claims checked against the server.

    python -m load.bench.reply_path [--rounds 2] [--sat-s 4] [--rate-s 4] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
import nats
import nkeys
import numpy as np

from runtime.nats_auth import public_key
from runtime.nats_server import free_port, nats_server_binary

INFER, SLOT, DONE = "bench.infer", "bench.slot", "bench.done"
BATCH, FLUSH_S = 32, 0.002
REQUEST_BODY = b"q" * 100
REPLY_BODY = b"r" * 200
REPLY_HEADERS = {"Symphony-Status": "200", "Symphony-Batch-Size": "32"}
WINDOW = 1024  # requests in flight at saturation
# The held cell: the shard holds each batch this long before dispatch (deferred scheduling), so at
# HELD_RATE about 6,000 requests wait in it: past 4,096 entries the server prunes a responder's
# reply map on every delivery (replyPermLimit in nats-server's client.go).
HOLD_S, HELD_RATE = 1.5, 4000
SETTINGS = {"hold_s": 0.0}  # per process; the shard's hold, set by a command
USERS = {  # user: (publish, subscribe, allow_responses)
    "client": ([INFER], ["_INBOX.>"], False),
    "shard_a": ([SLOT], [INFER, DONE], False),
    "agent_a": ([DONE, "_INBOX.>"], [SLOT], False),  # A: agents answer clients directly
    "shard_b": ([SLOT], [INFER, DONE], True),  # B: replies only to requests it received, once each
    "agent_b": ([DONE], [SLOT], False),  # B: no inbox rights
}


def seed(user: str) -> str:
    """A fixed NKey seed per user (a throwaway loopback server; the same in every process)."""
    return nkeys.encode_seed(hashlib.sha256(f"bench-{user}".encode()).digest(), nkeys.PREFIX_BYTE_USER).decode()


def server_config(port: int, log_file: str) -> str:
    users = []
    for user, (pub, sub, responses) in USERS.items():
        pub_json, sub_json = msgspec.json.encode(pub).decode(), msgspec.json.encode(sub).decode()
        perms = f"publish: {{ allow: {pub_json} }}, subscribe: {{ allow: {sub_json} }}"
        if responses:
            perms += ", allow_responses: true"  # defaults: max 1 reply, expires 2 min
        users.append(f'    {{ nkey: "{public_key(seed(user))}", permissions: {{ {perms} }} }}')
    return (f'host: "127.0.0.1"\nport: {port}\nlog_file: "{log_file}"\n'
            "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n")


async def connect(url: str, user: str, errors: list[str] | None = None) -> nats.NATS:
    async def on_error(e: Exception) -> None:
        if errors is not None:
            errors.append(str(e))
    return await nats.connect(url, nkeys_seed_str=seed(user), name=user, error_cb=on_error,
                              pending_size=64 * 1024 * 1024, flusher_queue_size=65536)


class Meter:
    """CPU seconds of this process from the first request after a reset to the last one finished."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.n = 0

    def start(self) -> None:
        if self.first is None:
            self.first = time.process_time()

    def done(self, n: int) -> None:
        self.n += n
        self.last = time.process_time()

    def take(self) -> dict:
        out = {"cpu_s": (self.last - self.first) if self.first is not None and self.n else 0.0, "n": self.n}
        self.__init__()
        return out


# ---- the three roles; each runs in its own process and obeys commands on a pipe ----------------

async def shard(url: str, mode: str, meter: Meter, errors: list[str]) -> nats.NATS:
    nc = await connect(url, f"shard_{mode}", errors)
    loop = asyncio.get_running_loop()
    replies: list[str] = []
    bodies: list[bytes] = []
    inflight: dict[int, list[str]] = {}
    state = {"next": 0, "timer": None}

    async def flush() -> None:
        nonlocal replies, bodies
        if state["timer"] is not None:
            state["timer"].cancel()
            state["timer"] = None
        if not bodies:
            return
        batch_id, state["next"] = state["next"], state["next"] + 1
        inflight[batch_id] = replies
        plan = [batch_id, replies if mode == "a" else [], bodies]  # B keeps the reply subjects
        replies, bodies = [], []
        data = msgspec.msgpack.encode(plan)
        if SETTINGS["hold_s"]:
            loop.call_later(SETTINGS["hold_s"], lambda: asyncio.ensure_future(nc.publish(SLOT, data)))
        else:
            await nc.publish(SLOT, data)

    async def on_request(msg) -> None:  # noqa: ANN001
        meter.start()
        replies.append(msg.reply)
        bodies.append(msg.data)
        if len(bodies) >= BATCH:
            await flush()
        elif state["timer"] is None:
            state["timer"] = loop.call_later(FLUSH_S, lambda: asyncio.ensure_future(flush()))

    async def on_done(msg) -> None:  # noqa: ANN001
        batch_id, result = msgspec.msgpack.decode(msg.data)
        subjects = inflight.pop(batch_id)
        if mode == "b":  # the msg.respond() of each request, from the one message that carries them all
            for reply, body in zip(subjects, result, strict=True):
                await nc.publish(reply, body, headers=REPLY_HEADERS)
        meter.done(len(subjects))

    await nc.subscribe(INFER, cb=on_request, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    await nc.subscribe(DONE, cb=on_done, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    return nc


async def agent(url: str, mode: str, meter: Meter, errors: list[str]) -> nats.NATS:
    nc = await connect(url, f"agent_{mode}", errors)

    async def on_plan(msg) -> None:  # noqa: ANN001
        meter.start()
        batch_id, replies, bodies = msgspec.msgpack.decode(msg.data)
        if mode == "a":
            for reply in replies:
                await nc.publish(reply, REPLY_BODY, headers=REPLY_HEADERS)
            report = [batch_id, len(replies)]  # the completion report the live agent sends
        else:
            report = [batch_id, [REPLY_BODY] * len(bodies)]
        await nc.publish(DONE, msgspec.msgpack.encode(report))
        meter.done(len(bodies))

    await nc.subscribe(SLOT, cb=on_plan, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    return nc


async def client_run(nc: nats.NATS, kind: str, param: int, secs: float, warmup_s: float = 1.0) -> dict:
    """kind "window": keep `param` requests in flight (saturation); "rate": `param` req/s."""
    inbox = nc.new_inbox()
    prefix = len(inbox) + 1
    cap = int(200_000 * (secs + 1))
    sent_at = np.zeros(cap)
    got_at = np.zeros(cap)
    counts = {"sent": 0, "got": 0, "dup": 0}
    room = asyncio.Event()

    async def on_reply(msg) -> None:  # noqa: ANN001
        i = int(msg.subject[prefix:])
        if got_at[i]:
            counts["dup"] += 1
            return
        got_at[i] = time.perf_counter()
        counts["got"] += 1
        if kind == "window" and counts["sent"] - counts["got"] <= param * 3 // 4:
            room.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    await nc.flush()
    start = time.perf_counter()
    end = start + secs
    while (now := time.perf_counter()) < end and counts["sent"] < cap:
        due = counts["got"] + param if kind == "window" else int((now - start) * param) + 1
        while counts["sent"] < min(due, cap):
            i = counts["sent"]
            sent_at[i] = time.perf_counter()
            await nc.publish(INFER, REQUEST_BODY, reply=f"{inbox}.{i}")
            counts["sent"] += 1
        if kind == "window":
            room.clear()
            try:
                await asyncio.wait_for(room.wait(), 0.1)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0.0005)
    stopped = time.perf_counter()
    deadline = stopped + 3.0
    while counts["got"] < counts["sent"] and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    n = counts["sent"]
    sent, got = sent_at[:n], got_at[:n]
    counted = (got >= start + warmup_s) & (got < stopped)
    steady = (sent >= start + warmup_s) & (got > 0)
    lat_ms = (got[steady] - sent[steady]) * 1000
    return {"sent": n, "unanswered": int(n - np.count_nonzero(got)), "dup": counts["dup"],
            "replies_per_s": float(np.count_nonzero(counted) / (stopped - start - warmup_s)),
            "p50_ms": float(np.percentile(lat_ms, 50)) if lat_ms.size else float("nan"),
            "p99_ms": float(np.percentile(lat_ms, 99)) if lat_ms.size else float("nan")}


def role_main(role: str, url: str, mode: str, conn) -> None:  # noqa: ANN001
    async def main() -> None:
        meter, errors = Meter(), []
        if role == "client":
            nc = await connect(url, "client", errors)
        else:
            nc = await (shard if role == "shard" else agent)(url, mode, meter, errors)
        await nc.flush()
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "run":
                conn.send(await client_run(nc, *command[1:]))
            elif command[0] == "hold":
                SETTINGS["hold_s"] = command[1]
            elif command[0] == "stats":
                conn.send({**meter.take(), "errors": len(errors), "first_error": errors[0] if errors else ""})
            else:
                break
        await nc.close()
    asyncio.run(main())


# ---- orchestration -----------------------------------------------------------------------------

def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(url: str, server_pid: int, mode: str, cells: list[tuple], log) -> list[dict]:  # noqa: ANN001
    ctx = mp.get_context("spawn")
    pipes, procs = {}, []
    for role in ("shard", "agent", "client"):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=role_main, args=(role, url, mode, theirs), daemon=True)
        proc.start()
        pipes[role] = mine
        procs.append(proc)
    for role, pipe in pipes.items():
        if not pipe.poll(30) or pipe.recv() != "ready":
            raise RuntimeError(f"{role} did not start")
    out = []
    try:
        for name, kind, param, secs, hold_s in cells:
            pipes["shard"].send(("hold", hold_s))
            for role in ("shard", "agent"):
                pipes[role].send(("stats",))
                pipes[role].recv()
            cpu0 = server_cpu_s(server_pid)
            pipes["client"].send(("run", kind, param, secs))
            row = {"mode": mode, "cell": name, **pipes["client"].recv()}
            row["server_cpu_s"] = server_cpu_s(server_pid) - cpu0
            for role in ("shard", "agent"):
                pipes[role].send(("stats",))
                stats = pipes[role].recv()
                row[f"{role}_us_per_req"] = 1e6 * stats["cpu_s"] / max(stats["n"], 1)
                row[f"{role}_errors"] = stats["errors"]
                if stats["errors"]:
                    log(f"    ! {role} saw {stats['errors']} errors, first: {stats['first_error']}")
            row["server_us_per_req"] = 1e6 * row["server_cpu_s"] / max(row["sent"], 1)
            row["p50_ms"] -= 1000 * hold_s  # latency beyond the hold
            row["p99_ms"] -= 1000 * hold_s
            log(f"    {mode.upper()} {name:<8} {row['replies_per_s']:>7,.0f} replies/s  p50 {row['p50_ms']:6.2f} ms"
                f"  p99 {row['p99_ms']:6.2f} ms  CPU us/req: shard {row['shard_us_per_req']:5.1f}"
                f" agent {row['agent_us_per_req']:5.1f} server {row['server_us_per_req']:5.1f}"
                f"  unanswered {row['unanswered']} dup {row['dup']}")
            out.append(row)
    finally:
        for pipe in pipes.values():
            pipe.send(("stop",))
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    return out


async def permission_checks(url: str) -> list[tuple[str, bool, str]]:
    """B's two claims, checked against the server, and A's grant as the control."""
    results = []
    client = await connect(url, "client")
    inbox = client.new_inbox()
    received: list[str] = []

    async def on_reply(msg) -> None:  # noqa: ANN001
        received.append(msg.subject)
    await client.subscribe(f"{inbox}.*", cb=on_reply)
    await client.flush()

    shard_errors: list[str] = []
    shard_b = await connect(url, "shard_b", shard_errors)

    async def answer_twice(msg) -> None:  # noqa: ANN001
        await msg.respond(b"first")
        await msg.respond(b"second")
        await shard_b.publish(f"{inbox}.never-asked", b"unsolicited")
    await shard_b.subscribe(INFER, cb=answer_twice)
    await shard_b.flush()
    await client.publish(INFER, REQUEST_BODY, reply=f"{inbox}.1")
    await client.flush()
    await asyncio.sleep(0.5)
    refused = [e for e in shard_errors if "permissions violation" in e.lower()]
    results.append(("B: shard answers one request twice -> server delivers 1, refuses the 2nd",
                     received.count(f"{inbox}.1") == 1 and len(refused) >= 1 and shard_b.is_connected,
                     f"client got {received.count(f'{inbox}.1')}; shard errors: {refused[:1]}"))
    results.append(("B: shard publishes to an inbox it never received -> refused",
                     f"{inbox}.never-asked" not in received and len(refused) >= 2, f"{len(refused)} violations in all"))
    for user, expect_ok in (("agent_b", False), ("agent_a", True)):
        errors: list[str] = []
        agent_nc = await connect(url, user, errors)
        await agent_nc.publish(f"{inbox}.{user}", REPLY_BODY)
        await agent_nc.flush()
        await asyncio.sleep(0.3)
        delivered = f"{inbox}.{user}" in received
        ok = delivered if expect_ok else (not delivered and any("permissions violation" in e.lower() for e in errors))
        what = "allowed (control)" if expect_ok else "refused"
        results.append((f"{user[-1].upper()}: agent publishes to a client inbox -> {what}", ok,
                        f"delivered={delivered}; errors: {errors[:1]}"))
        await agent_nc.close()
    await shard_b.close()
    await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sat-s", type=float, default=4.0, help="seconds per saturation cell")
    parser.add_argument("--rate-s", type=float, default=4.0, help="seconds of the fixed-rate cell")
    parser.add_argument("--rate", type=int, default=2000, help="req/s of the fixed-rate cell")
    parser.add_argument("--held-s", type=float, default=4.0,
                        help=f"seconds of the held cell ({HELD_RATE}/s, each batch held {HOLD_S} s)")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, flush=True)

    cells = [("sat", "window", WINDOW, args.sat_s, 0.0), (f"{args.rate}/s", "rate", args.rate, args.rate_s, 0.0),
             ("held", "rate", HELD_RATE, args.held_s, HOLD_S)]
    with tempfile.TemporaryDirectory(prefix="reply-path-") as tmp:
        port = free_port()
        config = Path(tmp) / "nats.conf"
        config.write_text(server_config(port, str(Path(tmp) / "nats.log")))
        server = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            url = f"nats://127.0.0.1:{port}"
            log(f"nats-server {url}: users {', '.join(USERS)}; shard_b has allow_responses: true")
            rows = []
            for r in range(args.rounds):
                for mode in ("a", "b"):
                    log(f"  round {r + 1}/{args.rounds}, mode {mode.upper()}")
                    rows += run_mode(url, server.pid, mode, cells, log)
            log("permission checks:")
            checks = asyncio.run(permission_checks(url))
            for name, ok, detail in checks:
                log(f"  [{'ok' if ok else 'FAILED'}] {name}  ({detail})")
        finally:
            server.terminate()
            server.wait(5)
    print_table(rows, cells, args.rate)


def print_table(rows: list[dict], cells: list[tuple], rate: int) -> None:
    def med(mode: str, cell: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["mode"] == mode and r["cell"] == cell)

    rate_cell = cells[1][0]
    held = f"{HELD_RATE:,}/s, {HOLD_S:g} s held"
    cols = [("replies/s at saturation", "sat", "replies_per_s", "{:,.0f}"),
            ("shard CPU us/req", "sat", "shard_us_per_req", "{:.1f}"),
            ("agent CPU us/req", "sat", "agent_us_per_req", "{:.1f}"),
            ("server CPU us/req", "sat", "server_us_per_req", "{:.1f}"),
            (f"p50 / p99 ms @ {rate:,}/s", rate_cell, ("p50_ms", "p99_ms"), "{:.2f}"),
            (f"server CPU us/req @ {held}", "held", "server_us_per_req", "{:.1f}"),
            (f"p99 ms beyond the hold @ {held}", "held", "p99_ms", "{:.2f}")]

    def cell(mode: str, name: str, keys: str | tuple, fmt: str, ratio: bool = False) -> str:
        keys = keys if isinstance(keys, tuple) else (keys,)
        if ratio:
            return " / ".join(f"{med('b', name, k) / med('a', name, k):.2f}" for k in keys)
        return " / ".join(fmt.format(med(mode, name, k)) for k in keys)

    print("\n| mode | " + " | ".join(c[0] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for mode, name in (("a", "A direct (agent -> inbox)"), ("b", "B forwarded (shard -> inbox)")):
        print(f"| {name} | " + " | ".join(cell(mode, c, k, f) for _, c, k, f in cols) + " |")
    print("| B / A | " + " | ".join(cell("", c, k, f, ratio=True) for _, c, k, f in cols) + " |")
    bad = sum(r["unanswered"] + r["dup"] for r in rows)
    print(f"\nmedians of {len(rows) // (2 * len(cells))} rounds; unanswered + duplicate replies over all cells: {bad}")


if __name__ == "__main__":
    main()
