"""`symphony load ...`: drive a live cluster with a workload, a rate sweep or a gap trace, and
write a results folder (JSON, plots, Markdown); `compare` puts two runs side by side."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from load.workload import load_workload
from runtime.client import default_nats_url
from schemas.status import CONTENT_JSON, CONTENT_MSGPACK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    load = subparsers.add_parser("load", help="open-loop load against a live cluster, with reports")
    commands = load.add_subparsers(dest="load_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nats-url", default=None)
        p.add_argument("--senders", type=int, default=1, help="sender processes (for high rates)")
        p.add_argument("--msgpack", action="store_true", help="send msgpack bodies (default JSON)")
        p.add_argument("--out", default=None, help="results folder (default results/load-<source>)")
        p.add_argument("--lag-limit-ms", type=float, default=5.0, help="a run lagging more is flagged")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.add_argument("--mlperf", action="store_true",
                       help="judge by MLPerf Server's rule: exit 1 unless every model's p99 latency <= its SLO")
        p.add_argument("--batch", type=int, default=1,
                       help="batched ingress: send what each --batch-window-ms gathers per model in messages of "
                            "up to this many requests (1: one message per request)")
        p.add_argument("--batch-window-ms", type=float, default=1.0, help="with --batch: how long requests gather")
        p.add_argument("--coarse-timing", action="store_true",
                       help="sleep instead of spinning before each send: less CPU, up to ~1 ms of lag")

    run = commands.add_parser("run", help="a workload file (the simulator's TOML), or a rate sweep over it")
    run.add_argument("workload")
    run.add_argument("--scale", type=float, default=1.0)
    run.add_argument("--rate", default=None, help="total requests/s over the bench, e.g. 500 or a sweep 200,400,800")
    run.add_argument("--seed", type=int, default=None)
    common(run)
    run.set_defaults(handler=_run)

    trace = commands.add_parser("trace", help="replay a gap trace: one inter-arrival gap in microseconds per line")
    trace.add_argument("file")
    trace.add_argument("--model", required=True)
    trace.add_argument("--slo-ms", type=float, default=100.0)
    common(trace)
    trace.set_defaults(handler=_trace)

    cmp_ = commands.add_parser("compare", help="two results folders side by side")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    cmp_.set_defaults(handler=_compare)


def _execute(args: argparse.Namespace, plan, source: str, out: Path) -> dict:  # noqa: ANN001
    from load.generator import request_bodies, send_plan  # the generator and plots load only when used:
    from load.live_report import summarize, write_outputs  # every role process starts through this CLI

    url = default_nats_url(args.nats_url)
    content_type = CONTENT_MSGPACK if args.msgpack else CONTENT_JSON

    async def main() -> dict:
        bodies = await request_bodies(url, plan.model_names, content_type)
        print(f"sending {len(plan.times_s)} requests over {plan.times_s[-1]:.1f} s to {url} "
              f"({args.senders} sender(s))", file=sys.stderr, flush=True)
        result, slots = await send_plan(url, plan, bodies, senders=args.senders, content_type=content_type,
                                        precise=not args.coarse_timing, batch_max=args.batch,
                                        batch_window_ms=args.batch_window_ms)
        config = {"source": source, "scale": plan.scale, "seed": plan.seed, "senders": args.senders,
                  "content_type": content_type, "nats_url": url, "batch": args.batch,
                  "batch_window_ms": args.batch_window_ms if args.batch > 1 else 0.0}
        summary = summarize(plan, result, slots, config, lag_limit_ms=args.lag_limit_ms)
        report = write_outputs(summary, plan, result, out)
        print(json.dumps({k: summary[k] for k in ("total", "generator", "mlperf_valid")}) if args.json else report)
        print(f"results: {out}/report.md", file=sys.stderr)
        return summary

    return asyncio.run(main())


def _run(args: argparse.Namespace) -> int:
    from load.generator import plan_from_workload

    loaded = load_workload(args.workload)
    name = loaded.workload.name
    rates = [float(r) for r in args.rate.split(",")] if args.rate else [None]
    valid = True
    for rate in rates:
        plan = plan_from_workload(loaded, scale=args.scale, rate=rate, seed=args.seed)
        suffix = f"-{rate:g}rps" if rate is not None else ""
        out = Path(args.out or f"results/load-{name}") / (f"rate{rate:g}" if len(rates) > 1 else "")
        valid &= _judge(args, _execute(args, plan, f"{name}{suffix}", out))
    return 0 if valid or not args.mlperf else 1


def _judge(args: argparse.Namespace, summary: dict) -> bool:
    if args.mlperf:
        verdict = "VALID" if summary["mlperf_valid"] else "INVALID"
        print(f"MLPerf Server rule (every model's p99 latency <= its SLO): {verdict}")
    return summary["mlperf_valid"]


def _trace(args: argparse.Namespace) -> int:
    from load.generator import plan_from_trace, read_trace

    plan = plan_from_trace(read_trace(args.file), args.model, args.slo_ms)
    out = Path(args.out or f"results/load-trace-{Path(args.file).stem}")
    valid = _judge(args, _execute(args, plan, f"trace {args.file} -> {args.model}", out))
    return 0 if valid or not args.mlperf else 1


def _compare(args: argparse.Namespace) -> int:
    from load.live_report import compare

    a = json.loads((Path(args.a) / "results.json").read_text())
    b = json.loads((Path(args.b) / "results.json").read_text())
    print(compare(a, b, (Path(args.a).name or args.a, Path(args.b).name or args.b)))
    return 0
