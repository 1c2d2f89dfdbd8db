"""The bad-input corpus: every malformed request we know of, each a named case with the answer the
protocol promises (docs/protocol.md, "Errors"), sent to a live cluster, followed by valid
requests that must still be answered 200.

    python -m load.bench.bad_input [--nats-url URL --model M --slots S0,S1 --shard SH] [--out DIR]

Without `--nats-url` it starts nats-server, a sleep agent and a shard in this process. A case
passes when it gets what it expects:
  400 / 413       exactly one reply with that `Symphony-Status` and a `Symphony-Reason`;
  no responders   exactly one reply from NATS itself (`Status: 503`, clients see 404): no shard
                  serves that subject (unknown models, names with dots or wildcards);
  client rejects  `runtime.client` refuses before sending (a name that is not one subject token, a
                  body past NATS's max_payload);
  no reply        nothing to answer (no reply subject; garbage on an internal subject), and the
                  service must survive it, which the final check proves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats

from runtime.client import SymphonyClient
from runtime.logs import configure_logging
from schemas.limits import InvalidName
from schemas.status import HEADER_REASON, HEADER_STATUS

MODEL = "fast_sleep"  # a sleep model taking x: FP32 [-1, 1]
VALID = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}'
MSGPACK = {"Content-Type": "application/msgpack"}
# Every case carries a generous SLO unless it sets its own: on a busy machine a drop (504) must not
# stand in for the answer under test, which for bodies comes from the agent after scheduling.
RELAXED = {"Symphony-Slo-Ms": "1000"}


class Expect(enum.Enum):
    BAD_REQUEST = "400"
    TOO_LARGE = "413"
    NO_RESPONDERS = "no responders"
    CLIENT_REJECTS = "client rejects"
    NO_REPLY = "no reply"


@dataclass(frozen=True)
class Case:
    name: str
    expect: Expect
    body: bytes = VALID
    headers: dict[str, str] | None = None
    model: str = MODEL  # the subject's last token(s); not checked, so it may be hostile
    subject: str = ""  # an internal subject instead of `<prefix>.infer.<model>`; `{slot}`: each slot
    reply: bool = True
    past_max_payload: bool = False  # the body: one byte more than the connection's max_payload


def _tensor(**fields: object) -> dict:
    return {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0], **fields}


def _json(*tensors: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def _msgpack(*tensors: dict, **extra: object) -> bytes:
    return msgspec.msgpack.encode({"inputs": list(tensors), **extra})


def body_cases() -> list[Case]:
    """Bodies the agent must answer 400 alone (or the shard 413)."""
    bad = Expect.BAD_REQUEST
    deep = b"[" * 100_000 + b"]" * 100_000
    not_utf8_name = _msgpack(_tensor()).replace(b"\xa1x", b"\xa1\xff")  # the tensor name, one byte
    return [
        Case("empty body", bad, b""),
        Case("one byte body", bad, b"{"),
        Case("one NUL byte", bad, b"\x00"),
        Case("not JSON", bad, b"not json"),
        Case("JSON array at the top", bad, b"[]"),
        Case("JSON null", bad, b"null"),
        Case("missing inputs", bad, b"{}"),
        Case("empty inputs", bad, _json()),
        Case("inputs is a string", bad, b'{"inputs": "x"}'),
        Case("wrong tensor name", bad, _json(_tensor(name="y"))),
        Case("unicode tensor name", bad, _json(_tensor(name="\u1e8b"))),
        Case("empty tensor name", bad, _json(_tensor(name=""))),
        Case("tensor name of 300 characters", bad, _json(_tensor(name="x" * 300))),
        Case("an extra input", bad, _json(_tensor(), _tensor(name="y"))),
        Case("the same input twice", bad, _json(_tensor(), _tensor())),
        Case("65 inputs", bad, _json(*(_tensor(name=f"x{i}") for i in range(65)))),
        Case("wrong shape", bad, _json(_tensor(shape=[1, 2], data=[1.0, 2.0]))),
        Case("shape and data disagree", bad, _json(_tensor(data=[1.0, 2.0]))),
        Case("negative dimension", bad, _json(_tensor(shape=[-1, 1]))),
        Case("huge shape", bad, _json(_tensor(shape=[1 << 31, 1 << 31]))),
        Case("rank 17", bad, _json(_tensor(shape=[1] * 17))),
        Case("float dimension", bad, _json(_tensor(shape=[1, 1.5]))),
        Case("NaN dimension (msgpack)", bad, _msgpack(_tensor(shape=[1, float("nan")])), MSGPACK),
        Case("infinite dimension (msgpack)", bad, _msgpack(_tensor(shape=[1, float("inf")])), MSGPACK),
        Case("dimension past 64 bits", bad, b'{"inputs": [{"name": "x", "shape": [1, 1' + b"0" * 30
             + b'], "datatype": "FP32", "data": [1]}]}'),
        Case("wrong datatype", bad, _json(_tensor(datatype="INT64", data=[1]))),
        Case("unsupported datatype", bad, _json(_tensor(datatype="BYTES"))),
        Case("strings as data", bad, _json(_tensor(data=["1"]))),
        Case("nested data", bad, _json(_tensor(data=[[1.0]]))),
        Case("object data", bad, _json(_tensor(data=[{}]))),
        Case("value beyond FP32", bad, _json(_tensor(data=[1e39]))),
        Case("integer beyond FP32's range", bad, _json(_tensor(data=[10**40]))),
        Case("integer past what a float holds", bad, _json(_tensor(data=[10**400]))),
        Case("raw bytes of the wrong length (msgpack)", bad, _msgpack(_tensor(data=b"\x00" * 3)), MSGPACK),
        Case("base64 of the wrong length", bad, _json(_tensor(data="AAAA"))),
        Case("msgpack garbage", bad, b"\xc1\xff\x00", MSGPACK),
        Case("JSON sent as msgpack", bad, VALID, MSGPACK),
        Case("msgpack sent as JSON", bad, _msgpack(_tensor())),
        Case("deeply nested JSON in parameters", bad, VALID[:-1] + b', "parameters": {"a": ' + deep + b"}}"),
        Case("deeply nested data", bad, VALID.replace(b"[1]}", deep + b"}")),
        Case("non-UTF-8 bytes in JSON", bad, VALID.replace(b'"x"', b'"\xff\xfe"')),
        Case("non-UTF-8 tensor name (msgpack)", bad, not_utf8_name, MSGPACK),
        Case("request id field of 10,000 characters", bad, _json(_tensor(), id="r" * 10_000)),
        Case("100 parameters", bad, _json(_tensor(), parameters={str(i): i for i in range(100)})),
        Case("body over the shard's limit", Expect.TOO_LARGE, b"x" * 950_000),
    ]


def header_cases() -> list[Case]:
    """Headers the shard must answer 400."""
    bad = Expect.BAD_REQUEST
    slo = [("negative", "-3"), ("zero", "0"), ("NaN", "NaN"), ("infinite", "inf"), ("past float", "1e309"),
           ("empty", ""), ("a word", "soon"), ("over an hour", "3600001"), ("with a unit", "50ms"),
           ("with an injected header line", "50\r\nContent-Type: text/plain")]
    cases = [Case(f"Symphony-Slo-Ms {what}", bad, headers={"Symphony-Slo-Ms": value}) for what, value in slo]
    deadline = [("a word", "soon"), ("NaN", "nan"), ("negative", "-5"), ("past 2^53", "1e300")]
    cases += [Case(f"Symphony-Deadline {what}", bad, headers={"Symphony-Deadline": value}) for what, value in deadline]
    return cases + [
        Case("Content-Type text/plain", bad, headers={"Content-Type": "text/plain"}),
        Case("Content-Type with parameters", bad, headers={"Content-Type": "application/json; charset=utf-8"}),
        Case("Content-Type empty", bad, headers={"Content-Type": ""}),
        Case("Symphony-Request-Id of 200 characters", bad, headers={"Symphony-Request-Id": "r" * 200}),
    ]


def subject_cases(prefix: str, shard: str) -> list[Case]:
    """Model names no shard serves, names that are not a subject token, no reply subject, and
    garbage on internal subjects (plans go to every slot: `run_corpus(slots=...)`)."""
    gone, client, quiet = Expect.NO_RESPONDERS, Expect.CLIENT_REJECTS, Expect.NO_REPLY
    plan_subject = f"{prefix}.slot.{{slot}}.plan"
    slot = "s0"  # the slot id inside a plan; the agent serves the slot of the subject it came on
    # A plan whose shard id is the single byte 0xff: not UTF-8.
    not_utf8_plan = b"\x99\x01\x01\xa1\xff\x00" + msgspec.msgpack.encode([slot, MODEL, [], 0, 0])[1:]
    # Messages whose 16th element, past every field, is an array nested 100,000 deep: decoders
    # skip unknown trailing elements by recursing into them.
    deep = b"\x91" * 100_000 + b"\xc0"
    sixteen = b"\xdc\x00\x10"  # an array of 16 elements
    deep_plan = sixteen + msgspec.msgpack.encode([1, 1, shard, 0, slot, MODEL, [], 0, 0, *[0] * 6])[1:] + deep
    deep_report = sixteen + msgspec.msgpack.encode([1, 1, slot, 0, 0, 0, 0, 0, "done", *[0] * 6])[1:] + deep
    return [
        Case("unknown model", gone, model="no_such_model"),
        Case("model name in other case", gone, model=MODEL.upper()),
        Case("model name with a dot", gone, model="a.b"),
        Case("model name with an extra token", gone, model=f"{MODEL}.x"),
        Case("model name *", gone, model="*"),
        Case("model name >", gone, model=">"),
        Case("unicode model name", gone, model="m\u00f6del"),
        Case("empty model token", gone, model=""),
        Case("client: model name with a space", client, model="a b"),
        Case("client: model name with CR LF", client, model="a\r\nPUB x 1"),
        Case("client: model name with a dot", client, model="a.b"),
        Case("client: model name >", client, model=">"),
        Case("client: model name of 65 characters", client, model="m" * 65),
        Case("client: body past NATS max_payload", client, past_max_payload=True),
        Case("no reply subject, valid body", quiet, reply=False),
        Case("no reply subject, garbage body", quiet, b"\xff", reply=False),
        Case("garbage plan on every slot", quiet, b"\xc1", subject=plan_subject, reply=False),
        Case("plan with a non-UTF-8 shard id on every slot", quiet, not_utf8_plan, subject=plan_subject, reply=False),
        Case("deeply nested plan on every slot", quiet, deep_plan, subject=plan_subject, reply=False),
        Case("garbage completion report", quiet, b"\x98\x00\x00\xa1\x80", subject=f"{prefix}.shard.{shard}.done",
             reply=False),
        Case("deeply nested completion report", quiet, deep_report, subject=f"{prefix}.shard.{shard}.done",
             reply=False),
    ]


def corpus(prefix: str = "symphony", shard: str = "shard-0") -> list[Case]:
    return body_cases() + header_cases() + subject_cases(prefix, shard)


@dataclass
class Outcome:
    case: Case
    passed: bool
    got: str
    replies: list[dict[str, str]] = field(default_factory=list)


async def run_corpus(nc: nats.NATS, cases: list[Case], *, slots: list[str], prefix: str = "symphony",
                     timeout_s: float = 10.0, grace_s: float = 0.5) -> list[Outcome]:
    """Send every case at once, each with its own reply subject, and judge what came back to each.

    At once, because a valid SLO defers a request to the last safe moment: bodies reach the agent
    together, in batches, where each bad one must be answered alone."""
    inbox = nc.new_inbox()
    replies: dict[int, list[dict[str, str]]] = {}

    async def on_reply(msg) -> None:  # noqa: ANN001
        replies.setdefault(int(msg.subject.rsplit(".", 1)[1]), []).append(dict(msg.headers or {}))

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    client = SymphonyClient(nc, prefix)
    rejected: dict[int, str] = {}
    try:
        for number, case in enumerate(cases):
            if case.expect is Expect.CLIENT_REJECTS:
                rejected[number] = await _client_rejects(client, case)
                continue
            subjects = sorted({case.subject.format(slot=s) for s in slots}) if case.subject else [
                f"{prefix}.infer.{case.model}"]
            for subject in subjects:
                await nc.publish(subject, case.body, reply=f"{inbox}.{number}" if case.reply else "",
                                 headers={**RELAXED, **(case.headers or {})})
        await nc.flush()
        expected = {n for n, case in enumerate(cases) if case.reply and case.expect is not Expect.CLIENT_REJECTS}
        await _until(lambda: expected <= replies.keys(), timeout_s)
        await asyncio.sleep(grace_s)  # a second reply to any case would arrive in this time
    finally:
        await sub.unsubscribe()
    return [_judge(case, replies.get(n, []), rejected.get(n, "")) for n, case in enumerate(cases)]


async def _client_rejects(client: SymphonyClient, case: Case) -> str:
    body = b"x" * (client.nc.max_payload + 1) if case.past_max_payload else case.body
    try:
        result = await client.infer(case.model, body, content_type="application/json", timeout_s=2.0)
    except (InvalidName, nats.errors.MaxPayloadError) as error:
        return type(error).__name__
    return f"sent: {result.status}"


async def _until(done, timeout_s: float) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def _judge(case: Case, replies: list[dict[str, str]], rejected: str) -> Outcome:
    if case.expect is Expect.CLIENT_REJECTS:
        return Outcome(case, not rejected.startswith("sent"), rejected)
    if case.expect is Expect.NO_REPLY:
        return Outcome(case, not replies, f"{len(replies)} replies" if replies else "no reply", replies)
    if len(replies) != 1:
        return Outcome(case, False, f"{len(replies)} replies", replies)
    (headers,) = replies
    if case.expect is Expect.NO_RESPONDERS:
        return Outcome(case, headers.get("Status") == "503" and HEADER_STATUS not in headers,
                       "no responders" if headers.get("Status") == "503" else headers.get(HEADER_STATUS, "?"),
                       replies)
    status = headers.get(HEADER_STATUS, "?")
    return Outcome(case, status == case.expect.value and bool(headers.get(HEADER_REASON)),
                   f"{status} {headers.get(HEADER_REASON, '')[:60]}", replies)


async def still_serving(nc: nats.NATS, model: str = MODEL, requests: int = 16,
                        prefix: str = "symphony") -> dict[int, int]:
    """Statuses of `requests` concurrent valid requests (all 200 when every slot still serves).
    Their SLO is generous: this checks liveness, not latency on a busy machine."""
    client = SymphonyClient(nc, prefix)
    results = await asyncio.gather(*(client.infer(model, VALID, content_type="application/json", slo_ms=1000,
                                                  timeout_s=10) for _ in range(requests)))
    statuses: dict[int, int] = {}
    for result in results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    return statuses


def report(outcomes: list[Outcome], serving: dict[int, int]) -> str:
    passed = sum(o.passed for o in outcomes)
    width = max(len(o.case.name) for o in outcomes)
    lines = [f"{'case':<{width}}  {'expected':<15}  {'got':<40}  ok"]
    lines += [f"{o.case.name:<{width}}  {o.case.expect.value:<15}  {o.got[:40]:<40}  {'yes' if o.passed else 'NO'}"
              for o in outcomes]
    lines.append(f"\n{passed}/{len(outcomes)} cases passed ({passed / len(outcomes):.1%}); afterwards "
                 f"{serving.get(200, 0)}/{sum(serving.values())} valid requests answered 200 (statuses {serving})")
    return "\n".join(lines)


CONFIG = f"""
subject_prefix = "symphony"
[[models]]
name = "{MODEL}"
kind = "sleep:20,500"
slo_ms = 30
[[agents]]
id = "sleep-0"
slots = [{{id = "s0", models = ["{MODEL}"]}}, {{id = "s1", models = ["{MODEL}"]}}]
[[shards]]
id = "shard-0"
models = ["{MODEL}"]
slots = ["s0", "s1"]
"""


@contextlib.asynccontextmanager
async def local_cluster() -> AsyncIterator[str]:
    """nats-server, one sleep agent with two slots and one shard, all but the server in this process."""
    from gpu_agent.agent import Agent
    from runtime.cluster_config import load_cluster_config
    from runtime.nats_server import NatsServer
    from shard.service.shard import ShardService

    with tempfile.TemporaryDirectory() as folder, NatsServer() as server:
        path = Path(folder) / "cluster.toml"
        path.write_text(CONFIG)
        config = load_cluster_config(path)
        agent, shard = Agent(config, "sleep-0"), ShardService(config, "shard-0")
        agent.load()
        await agent.start(server.url)
        await shard.start(server.url, agents_timeout_s=10)
        try:
            yield server.url
        finally:
            await shard.stop()
            await agent.stop()


async def main_async(args: argparse.Namespace) -> tuple[list[Outcome], dict[int, int]]:
    async with contextlib.AsyncExitStack() as stack:
        url = args.nats_url or await stack.enter_async_context(local_cluster())
        nc = await nats.connect(url)
        stack.push_async_callback(nc.close)
        outcomes = await run_corpus(nc, corpus(shard=args.shard), slots=args.slots.split(","))
        return outcomes, await still_serving(nc, args.model, args.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats-url", default=None, help="a running cluster (default: start one here)")
    parser.add_argument("--model", default=MODEL, help="a served model taking x: FP32 [-1, 1] (a sleep model)")
    parser.add_argument("--slots", default="s0,s1", help="the model's slots, for the internal-subject cases")
    parser.add_argument("--shard", default="shard-0", help="the model's shard, for the internal-subject cases")
    parser.add_argument("--requests", type=int, default=16, help="valid requests sent after the corpus")
    parser.add_argument("--out", default="results/bench-bad-input")
    args = parser.parse_args(argv)
    configure_logging(json=False, level="critical")  # the roles in this process log every bad input
    outcomes, serving = asyncio.run(main_async(args))
    print(report(outcomes, serving))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"case": o.case.name, "expected": o.case.expect.value, "got": o.got, "passed": o.passed}
            for o in outcomes]
    (out / "results.json").write_text(json.dumps({"cases": rows, "after": {str(k): v for k, v in serving.items()}},
                                                 indent=1))
    return 0 if all(o.passed for o in outcomes) and serving == {200: args.requests} else 1


if __name__ == "__main__":
    sys.exit(main())
