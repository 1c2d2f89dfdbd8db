"""The load generator's own limit: the highest rate one sender process keeps on schedule (lag
p99 under 1 ms), and its CPU per request sent, against an echo responder on the same host.

    python -m load.bench.generator_rate [--rates 2000,4000,...] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import numpy as np

from load.sender import send_schedule
from runtime.nats_server import NatsServer

SUBJECT = "bench.echo"
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'


async def responder(url: str) -> None:
    nc = await nats.connect(url)
    headers = {"Symphony-Status": "200", "Symphony-Batch-Size": "1"}

    async def echo(msg) -> None:  # noqa: ANN001
        await nc.publish(msg.reply, b"{}", headers=headers)

    await nc.subscribe(SUBJECT, cb=echo, pending_msgs_limit=10_000_000)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.close()


async def sweep(url: str, rates: list[float], seconds: float) -> list[dict]:
    rows = []
    for rate in rates:
        n = int(rate * seconds)
        result = await send_schedule(url, np.arange(n) / rate, [SUBJECT] * n, [BODY] * n, drain_s=2.0)
        lag_ms = result.lag_s * 1000
        row = {"rate": rate, "lag_p50_ms": float(np.percentile(lag_ms, 50)),
               "lag_p99_ms": float(np.percentile(lag_ms, 99)), "lag_max_ms": float(lag_ms.max()),
               "cpu_us_per_request": result.extra["send_cpu_s"] / n * 1e6,
               "replied": float(np.count_nonzero(result.status)) / n}
        row["on_schedule"] = bool(row["lag_p99_ms"] < 1.0)
        rows.append(row)
        print(f"{rate:>8.0f} req/s: lag p50 {row['lag_p50_ms']:.3f} p99 {row['lag_p99_ms']:.3f} "
              f"max {row['lag_max_ms']:.2f} ms, {row['cpu_us_per_request']:.1f} us CPU/request, "
              f"{row['replied']:.2%} replied -> {'on schedule' if row['on_schedule'] else 'behind'}",
              file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000,10000,12000,15000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default="results/bench-generator")
    parser.add_argument("--responder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.responder:
        asyncio.run(responder(args.responder))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with NatsServer() as server:
        echo = subprocess.Popen([sys.executable, "-m", "load.bench.generator_rate", "--responder", server.url])
        time.sleep(1.0)
        try:
            rows = asyncio.run(sweep(server.url, [float(r) for r in args.rates.split(",")], args.seconds))
        finally:
            echo.terminate()
            echo.wait()
    best = max((r["rate"] for r in rows if r["on_schedule"]), default=0.0)
    (out / "results.json").write_text(json.dumps({"rows": rows, "max_on_schedule_rps": best}, indent=1))
    print(f"one sender process keeps {best:.0f} req/s on schedule (lag p99 < 1 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
