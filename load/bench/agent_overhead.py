"""JAX agent overhead: batch throughput through the agent (plans over NATS, bodies decoded and
validated, replies encoded and sent) versus calling the compiled model directly in a loop.

    python -m load.bench.agent_overhead [--model cnn] [--batch 16] [--batches 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import nats

from gpu_agent.agent import Agent
from runtime.cluster_config import ClusterConfig, load_cluster_config
from runtime.nats_server import NatsServer
from schemas.plan import PLAN_VERSION, BatchPlan, PlanRequest, plan_encoder
from schemas.status import CONTENT_MSGPACK
from schemas.tensors import encode_request


def config_text(model: str, batch: int) -> str:
    return (f'subject_prefix = "symphony"\n[[models]]\nname = "{model}"\nkind = "{model}"\nslo_ms = 1000\n'
            f'batch_size_max = {batch}\n[[agents]]\nid = "a"\nslots = [{{id = "s0", models = ["{model}"]}}]\n'
            f'[[shards]]\nid = "bench"\nmodels = ["{model}"]\nslots = ["s0"]\n')


def direct(agent: Agent, model: str, batch: int, batches: int) -> float:
    runner = agent.runners[model]
    inputs = runner.model.example_inputs(batch)
    runner.run(inputs, batch)
    started = time.perf_counter()
    for _ in range(batches):
        runner.run(inputs, batch)
    return batches / (time.perf_counter() - started)


async def through_agent(agent: Agent, url: str, model: str, batch: int, batches: int) -> float:
    await agent.start(url)
    nc = await nats.connect(url)
    done = asyncio.Event()
    reports = 0

    async def on_report(msg) -> None:  # noqa: ANN001
        nonlocal reports
        reports += 1
        if reports == batches + 1:
            done.set()

    await nc.subscribe("symphony.shard.bench.done", cb=on_report)
    await nc.subscribe("sink.>", cb=_ignore)
    runner = agent.runners[model]
    body = encode_request({k: v[:1] for k, v in runner.model.example_inputs(1).items()}, CONTENT_MSGPACK)
    requests = [PlanRequest(i, f"sink.{i}", body, CONTENT_MSGPACK) for i in range(batch)]

    def plan(plan_id: int) -> bytes:
        return plan_encoder.encode(BatchPlan(version=PLAN_VERSION, plan_id=plan_id, shard_id="bench", epoch=0,
                                             slot_id="s0", model=model, requests=requests, exec_at_ns=0,
                                             deadline_us=10**12))

    await nc.publish("symphony.slot.s0.plan", plan(0))  # warm-up batch, not timed
    while reports < 1:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    for plan_id in range(1, batches + 1):
        await nc.publish("symphony.slot.s0.plan", plan(plan_id))
    await nc.flush()
    await done.wait()
    rate = batches / (time.perf_counter() - started)
    await nc.close()
    await agent.stop()
    return rate


async def _ignore(_msg) -> None:  # noqa: ANN001
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/bench-agent-overhead")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "agent.toml"
    path.write_text(config_text(args.model, args.batch))
    config: ClusterConfig = load_cluster_config(path)
    rows = []
    with NatsServer() as server:
        for round_ in range(args.rounds):  # alternate, so both see the same machine
            agent = Agent(config, "a")
            agent.load()
            d = direct(agent, args.model, args.batch, args.batches)
            a = asyncio.run(through_agent(agent, server.url, args.model, args.batch, args.batches))
            rows.append({"round": round_, "direct_batches_per_s": d, "agent_batches_per_s": a, "ratio": a / d})
            print(f"round {round_}: direct {d:.1f} batches/s, through the agent {a:.1f} batches/s, ratio {a / d:.3f}",
                  file=sys.stderr, flush=True)
    best = max(rows, key=lambda r: r["ratio"])
    median = sorted(r["ratio"] for r in rows)[len(rows) // 2]
    result = {"model": args.model, "batch": args.batch, "rounds": rows, "median_ratio": median}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"{args.model} batch {args.batch}: median ratio agent/direct {median:.3f} (target >= 0.9); "
          f"best {best['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
