"""Batched ingress: one reply per request, or one batched reply message per batch per caller?

Per request (`single`, what symphony does): the responder (the agent) publishes each request's
reply to that request's own subject, headers as docs/protocol.md says; the caller's one wildcard
subscription takes them. Batched (`batched`, the alternative): the responder sends one message
per batch to the caller, a msgpack list of each request's reply headers and body, which the
caller decodes and walks. Both carry the same headers and bodies per request.

Two processes (caller, responder) on a real nats-server, the caller keeping `--window` batch
messages of `--batch` requests in flight (closed loop, so each mode runs at its own limit);
modes alternate single, batched, single, batched and the medians are reported: requests/s
answered, and CPU microseconds per request in the responder, the caller and nats-server.

    python -m load.bench.reply_style [--rounds 2] [--seconds 3] [--batch 32] [--window 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time

import msgspec
import nats

from load.bench.bare_forwarder import REPLY_BODY
from load.bench.reply_path import server_cpu_s
from runtime.nats_server import NatsServer

SUBJECT = "bench.infer_many"
HEADERS = {"Symphony-Status": "200", "Content-Type": "application/json", "Symphony-Batch-Size": "32",
           "Symphony-Queue-Us": "1234", "Symphony-Compute-Us": "567"}
ITEM = b'{"body":{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]},"id":"12345"}'


async def responder(url: str, mode: str, seconds: float) -> float:
    """Answers each batch: `single` one publish per request, `batched` one per batch."""
    nc = await nats.connect(url, name="reply-style-responder", pending_size=64 * 1024 * 1024)

    async def on_batch(msg) -> None:  # noqa: ANN001
        items = msgspec.json.decode(msg.data)["requests"]
        if mode == "single":
            for i, item in enumerate(items):
                await nc.publish(f"{msg.reply}.{i}", REPLY_BODY, headers=HEADERS | {"Symphony-Request-Id": item["id"]})
        else:
            answers = [[i, HEADERS | {"Symphony-Request-Id": item["id"]}, REPLY_BODY] for i, item in enumerate(items)]
            await nc.publish(msg.reply, msgspec.msgpack.encode(answers))

    await nc.subscribe(SUBJECT, cb=on_batch, pending_msgs_limit=1_000_000)
    await nc.flush()
    started = time.process_time()
    await asyncio.sleep(seconds + 1.5)
    await nc.close()
    return time.process_time() - started


async def caller(url: str, mode: str, seconds: float, batch: int, window: int) -> tuple[int, float]:
    """Keeps `window` batches in flight; returns requests answered and CPU seconds in `seconds`."""
    nc = await nats.connect(url, name="reply-style-caller", pending_size=64 * 1024 * 1024)
    inbox = nc.new_inbox()
    body = b'{"requests":[' + b",".join([ITEM] * batch) + b"]}"
    left: dict[str, int] = {}
    answered = 0
    stop = False
    sequence = iter(range(1 << 62))

    async def send() -> None:
        key = str(next(sequence))
        left[key] = batch
        await nc.publish(SUBJECT, body, reply=f"{inbox}.{key}")

    async def on_reply(msg) -> None:  # noqa: ANN001
        nonlocal answered
        tokens = msg.subject[len(inbox) + 1:].split(".")
        if mode == "single":
            _status = (msg.headers or {})["Symphony-Status"]
            left[tokens[0]] -= 1
            answered += 1
        else:
            for _index, headers, _reply in msgspec.msgpack.decode(msg.data):
                _status = headers["Symphony-Status"]
                left[tokens[0]] -= 1
                answered += 1
        if not left[tokens[0]]:
            del left[tokens[0]]
            if not stop:
                await send()

    await nc.subscribe(f"{inbox}.>", cb=on_reply, pending_msgs_limit=1_000_000)
    await nc.flush()
    await asyncio.sleep(0.5)  # the responder is subscribed
    for _ in range(window):
        await send()
    await asyncio.sleep(0.5)  # warm
    counted, cpu = answered, time.process_time()
    await asyncio.sleep(seconds)
    counted, cpu = answered - counted, time.process_time() - cpu
    stop = True
    await nc.close()
    return counted, cpu


def _role(args: tuple) -> tuple:
    role, url, mode, seconds, batch, window = args
    if role == "responder":
        return (asyncio.run(responder(url, mode, seconds)),)
    return asyncio.run(caller(url, mode, seconds, batch, window))


def run_mode(server: NatsServer, mode: str, seconds: float, batch: int, window: int) -> dict:
    """One mode once: both processes, and nats-server's CPU over the same seconds."""
    with mp.get_context("spawn").Pool(2) as pool:
        jobs = [("responder", server.url, mode, seconds, batch, window), ("caller", server.url, mode, seconds, batch,
                                                                          window)]
        pending = pool.map_async(_role, jobs, 1)
        time.sleep(1.0)  # both connected, warm-up under way
        server_before = server_cpu_s(server.process.pid)
        (responder_cpu,), (answered, caller_cpu) = pending.get()
        server_cpu = server_cpu_s(server.process.pid) - server_before
    return {"mode": mode, "rps": answered / seconds, "responder_us": responder_cpu / answered * 1e6 * seconds
            / (seconds + 1.5), "caller_us": caller_cpu / answered * 1e6, "server_us": server_cpu / answered * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args(argv)
    rows = []
    with NatsServer(jetstream=False) as server:
        for _ in range(args.rounds):
            for mode in ("single", "batched"):
                rows.append(run_mode(server, mode, args.seconds, args.batch, args.window))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| reply style | requests/s answered | responder CPU us/request | caller CPU us/request | "
          "nats-server CPU us/request |\n|---|---|---|---|---|")
    for mode in ("single", "batched"):
        mine = [r for r in rows if r["mode"] == mode]
        med = {k: statistics.median(r[k] for r in mine) for k in ("rps", "responder_us", "caller_us", "server_us")}
        print(f"| {mode} | {med['rps']:,.0f} | {med['responder_us']:.1f} | {med['caller_us']:.1f} | "
              f"{med['server_us']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
