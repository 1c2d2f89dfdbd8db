"""Batched ingress without a server (shard/core/batch_ingress.py, schemas/ingress.py): how a batch
message opens into items, where each item's reply goes, that an item is admitted by the single
request's rules, and how a caller splits its requests to fit NATS's max_payload."""

import msgspec
import numpy as np

from gpu_agent.batches import encode_replies
from schemas.ingress import ITEMS_MAX, OutgoingItem, encode_batch, split_to_fit
from schemas.plan import PlanRequest
from schemas.status import CONTENT_JSON, CONTENT_MSGPACK, HEADER_CONTENT_TYPE, Status
from shard.core.admission import DUPLICATE, AdmissionLimits, Admitted, Rejected, SeenIds
from shard.core.batch_ingress import admit_item, open_batch, read_item

MS = 1_000_000
SLO_NS = 100 * MS
WALL_NS = 1_700_000_000_000 * MS
NOW_NS = 5_000 * MS
LIMITS = AdmissionLimits(body_bytes_max=1000, queue_len_max=3)
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'
JSON = {HEADER_CONTENT_TYPE: CONTENT_JSON}


def items_of(raw: bytes, headers=JSON, batch_reply="in.b") -> list:
    opened = open_batch(raw, headers)
    assert not isinstance(opened, Rejected), opened
    return [read_item(r, i, headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON), batch_reply)
            for i, r in enumerate(opened)]


def admitted(item, *, seen=None, queued=0, released=False):
    return admit_item(item, len(bytes(item.body)), CONTENT_JSON, SLO_NS, WALL_NS, NOW_NS, seen or SeenIds(),
                      LIMITS, queued=queued, released=released)


def test_items_keep_their_bodies_byte_for_byte_in_either_encoding() -> None:
    for content_type in (CONTENT_JSON, CONTENT_MSGPACK):
        body = BODY if content_type == CONTENT_JSON else msgspec.msgpack.encode(msgspec.json.decode(BODY))
        raw = encode_batch([OutgoingItem(msgspec.Raw(body), id="a"), OutgoingItem(msgspec.Raw(body))], content_type)
        read = items_of(raw, {HEADER_CONTENT_TYPE: content_type})
        assert [bytes(item.body) for _, item in read] == [body, body]
        assert [item.id for _, item in read] == ["a", ""]


def test_an_item_is_answered_on_its_own_reply_else_on_the_batch_reply_dot_its_index() -> None:
    raw = b'{"requests":[{"body":{},"reply":"client.7"},{"body":{}}]}'
    assert [reply for reply, _ in items_of(raw)] == ["client.7", "in.b.1"]
    assert [reply for reply, _ in items_of(raw, batch_reply="")] == ["client.7", ""]  # "": cannot be answered


def test_a_malformed_item_or_unusable_reply_is_that_items_400_and_not_the_batchs() -> None:
    raw = (b'{"requests":[5,{"body":{},"slo_ms":"soon"},{"body":{},"reply":"a b"},{"body":{},"reply":"a.*"},'
           b'{"body":{}}]}')
    read = items_of(raw)
    assert [reply for reply, _ in read] == ["in.b.0", "in.b.1", "in.b.2", "in.b.3", "in.b.4"]
    assert [isinstance(item, Rejected) and item.status for _, item in read[:4]] == [Status.BAD_REQUEST] * 4
    assert "reply is not a subject" in read[2][1].reason
    assert not isinstance(read[4][1], Rejected)


def test_a_message_that_is_not_a_batch_is_refused_whole() -> None:
    for raw, headers in ((b"{nope", JSON), (b'{"requests": 5}', JSON), (b'{"requests":[]}', {HEADER_CONTENT_TYPE: "x"}),
                         (b'{"requests":[' + b",".join([b"{}"] * (ITEMS_MAX + 1)) + b"]}", JSON)):
        refused = open_batch(raw, headers)
        assert isinstance(refused, Rejected) and refused.status == Status.BAD_REQUEST, raw[:20]


def test_an_item_is_admitted_by_the_single_request_rules_with_its_own_field_names() -> None:
    (_, plain), (_, tight), (_, bad_slo), (_, late), (_, long_id) = items_of(
        b'{"requests":[{"body":{}},{"body":{},"slo_ms":20},{"body":{},"slo_ms":-1},{"body":{},"deadline_ms":1000},'
        b'{"body":{},"id":"' + b"i" * 129 + b'"}]}')
    assert admitted(plain) == Admitted(CONTENT_JSON, "", SLO_NS, WALL_NS + SLO_NS)
    assert admitted(tight) == Admitted(CONTENT_JSON, "", 20 * MS, WALL_NS + 20 * MS)
    assert admitted(bad_slo) == Rejected(Status.BAD_REQUEST, "slo_ms must be a positive number of milliseconds",
                                         "bad_request", "")
    assert admitted(late).status == Status.DROPPED
    assert admitted(long_id).reason == "id longer than 128 characters"


def test_each_item_meets_the_queue_limit_and_duplicate_ids_on_its_own() -> None:
    (_, item), = items_of(b'{"requests":[{"body":{},"id":"x"}]}')
    assert admitted(item, queued=3).status == Status.OVERLOADED
    seen = SeenIds()
    seen.remember("x", NOW_NS + SLO_NS, NOW_NS)
    assert admitted(item, seen=seen) is DUPLICATE
    assert admitted(item, released=True).hand_back


def test_callers_split_requests_into_batches_that_fit_the_payload_and_item_limits() -> None:
    assert split_to_fit([], 1000) == []
    runs = split_to_fit([300] * 10, 1500)
    assert [len(r) for r in runs] == [3, 3, 3, 1] and runs[0].start == 0 and runs[-1].stop == 10
    assert split_to_fit([5000, 10], 1000) == [range(0, 1), range(1, 2)]  # too large alone: a run of its own
    assert [len(r) for r in split_to_fit([1] * 10, 10**9, items_max=4)] == [4, 4, 2]
    body = b"x" * 300
    for run in runs:
        encoded = encode_batch([OutgoingItem(msgspec.Raw(b'"' + body + b'"'), id="r") for _ in run], CONTENT_JSON)
        assert len(encoded) <= 1500


def test_an_agent_sends_batched_200s_in_one_message_per_batch_reply_and_the_rest_alone() -> None:
    outputs = {"y": np.arange(4, dtype=np.float32).reshape(4, 1)}
    served = [PlanRequest(1, "in.b.0", BODY, CONTENT_JSON, reply_batched=True),
              PlanRequest(2, "in.c.3", BODY, CONTENT_JSON, reply_batched=True),
              PlanRequest(3, "in.b.5", BODY, CONTENT_JSON, "id5", reply_batched=True),
              PlanRequest(4, "own.reply", BODY, CONTENT_JSON)]
    messages = encode_replies("m", outputs, served, 0, 0, 1 << 20)
    assert [subject for subject, _, _ in messages] == ["own.reply", "in.b", "in.c"]
    entries = msgspec.json.decode(messages[1][1])
    assert [(e["index"], e["body"]["outputs"][0]["data"]) for e in entries] == [(0, [0.0]), (5, [2.0])]
    assert entries[1]["headers"]["Symphony-Request-Id"] == "id5"
    assert messages[1][2]["Symphony-Replies"] == "batched"
    small = encode_replies("m", outputs, served[:1] * 3, 0, 0, 900)  # over max_payload together: split
    assert len(small) == 3 and all(len(body) <= 900 for _, body, _ in small)
