"""Per-model statistics (runtime/stats.py, schemas/stats.py): Triton's meanings from the counters
shards and agents keep, the merge of their parts, and the wire form the OIP gateway returns."""

from __future__ import annotations

import msgspec
import pytest

from runtime.stats import ModelCounters, encode_parts, merge_statistics, snapshots
from schemas.stats import ModelStatistics, StatisticDuration, model_statistics_decoder, stats_part_decoder

WALL_NS = 1_700_000_000_123_456_789


def agent_counters() -> ModelCounters:
    """Two batches of 3 and one of 1, all answered 200; one request answered 400."""
    c = ModelCounters()
    c.executed(3, queue_ns=3 * 2_000, input_ns=100, infer_ns=5_000, wall_ns=WALL_NS)
    c.answered(3, success_ns=3 * 8_000, output_ns=300, wall_ns=WALL_NS)
    c.executed(3, queue_ns=3 * 1_000, input_ns=200, infer_ns=6_000, wall_ns=WALL_NS)
    c.answered(3, success_ns=3 * 9_000, output_ns=400, wall_ns=WALL_NS)
    c.executed(1, queue_ns=500, input_ns=50, infer_ns=4_000, wall_ns=WALL_NS)
    c.answered(1, success_ns=7_000, output_ns=60, wall_ns=WALL_NS + 2_000_000)
    c.failed(1, ns=1_500, wall_ns=WALL_NS)
    return c


def test_counters_report_per_request_and_per_batch_durations_as_triton_does() -> None:
    stats = agent_counters().snapshot("mlp")
    assert (stats.name, stats.version) == ("mlp", "1")
    assert stats.inference_count == 7 and stats.execution_count == 3
    assert stats.last_inference == (WALL_NS + 2_000_000) // 1_000_000  # the latest, in ms (not the last call)
    s = stats.inference_stats
    assert s.success == StatisticDuration(7, 3 * 8_000 + 3 * 9_000 + 7_000)
    assert s.fail == StatisticDuration(1, 1_500)
    assert s.queue == StatisticDuration(7, 6_000 + 3_000 + 500)
    # Each request of a batch counts the batch's whole duration.
    assert s.compute_input == StatisticDuration(7, 3 * 100 + 3 * 200 + 50)
    assert s.compute_infer == StatisticDuration(7, 3 * 5_000 + 3 * 6_000 + 4_000)
    assert s.compute_output == StatisticDuration(7, 3 * 300 + 3 * 400 + 60)
    assert s.cache_hit == s.cache_miss == StatisticDuration(0, 0)
    # Each execution counts once, at its batch size, with the batch's durations.
    by_size = {b.batch_size: b for b in stats.batch_stats}
    assert [b.batch_size for b in stats.batch_stats] == [1, 3]
    assert by_size[3].compute_input == StatisticDuration(2, 300)
    assert by_size[3].compute_infer == StatisticDuration(2, 11_000)
    assert by_size[3].compute_output == StatisticDuration(2, 700)
    assert by_size[1].compute_infer == StatisticDuration(1, 4_000)
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == stats.inference_count


def test_merge_sums_members_and_keeps_the_latest_inference() -> None:
    shard = ModelCounters()
    shard.failed(2, ns=10_000, wall_ns=WALL_NS + 5_000_000)  # e.g. two 429s at the door
    other_agent = ModelCounters()
    other_agent.executed(3, queue_ns=300, input_ns=10, infer_ns=1_000, wall_ns=WALL_NS)
    other_agent.answered(3, success_ns=3_000, output_ns=20, wall_ns=WALL_NS)
    parts = [agent_counters().snapshot("mlp"), shard.snapshot("mlp"), other_agent.snapshot("mlp"),
             ModelCounters().snapshot("cnn")]
    merged = merge_statistics(parts).model_stats
    assert [m.name for m in merged] == ["cnn", "mlp"]
    cnn, mlp = merged
    assert cnn == ModelStatistics(name="cnn")  # hosted, never used: zeros, as Triton shows a loaded model
    assert mlp.inference_count == 10 and mlp.execution_count == 4
    assert mlp.last_inference == (WALL_NS + 5_000_000) // 1_000_000
    assert mlp.inference_stats.fail == StatisticDuration(3, 11_500)
    assert mlp.inference_stats.success.count == 10
    assert {b.batch_size: b.compute_infer.count for b in mlp.batch_stats} == {1: 1, 3: 3}
    assert merge_statistics([mlp]).model_stats == [mlp]  # merging one part changes nothing


def test_snapshots_select_one_model_or_every_model() -> None:
    counters = {"b": ModelCounters(), "a": ModelCounters()}
    assert [s.name for s in snapshots(counters, None)] == ["a", "b"]
    assert [s.name for s in snapshots(counters, "b")] == ["b"]
    assert snapshots(counters, "zzz") == []


def test_a_large_answer_is_split_into_parts_that_fit_the_payload() -> None:
    many = []
    for i in range(40):
        c = ModelCounters()
        for size in range(1, 65):
            c.executed(size, queue_ns=1, input_ns=1, infer_ns=1, wall_ns=WALL_NS)
        many.append(c.snapshot(f"m{i:02}"))
    payload_bytes_max = 64 * 1024
    messages = encode_parts("agent.a0", ["agent.a0", "shard.s0"], True, many, payload_bytes_max)
    assert len(messages) > 1 and all(len(m) <= payload_bytes_max for m in messages)
    parts = [stats_part_decoder.decode(m) for m in messages]
    assert [p.part for p in parts] == list(range(len(parts))) and {p.parts for p in parts} == {len(parts)}
    assert [s for p in parts for s in p.model_stats] == many
    (empty,) = encode_parts("shard.s0", [], False, [], payload_bytes_max)
    assert stats_part_decoder.decode(empty).model_stats == []


def test_a_part_numbered_beyond_its_count_does_not_decode() -> None:
    with pytest.raises(msgspec.ValidationError, match="part 2 of 2"):
        stats_part_decoder.decode(b'{"member": "shard.s0", "part": 2, "parts": 2}')
    with pytest.raises(msgspec.ValidationError):
        stats_part_decoder.decode(b'{"member": "coordinator.c0"}')


def test_the_response_is_tritons_json_and_grpc_message() -> None:
    """What the gateway returns as is: Triton's JSON field names, and gRPC's message from them."""
    response = merge_statistics([agent_counters().snapshot("mlp")])
    data = msgspec.json.encode(response)
    assert model_statistics_decoder.decode(data) == response
    raw = msgspec.json.decode(data)
    (model,) = raw["model_stats"]
    assert set(model) == {"name", "version", "last_inference", "inference_count", "execution_count",
                          "inference_stats", "batch_stats"}
    assert set(model["inference_stats"]) == {"success", "fail", "queue", "compute_input", "compute_infer",
                                             "compute_output", "cache_hit", "cache_miss"}
    assert set(model["batch_stats"][0]) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    json_format = pytest.importorskip("google.protobuf.json_format")
    message = json_format.ParseDict(msgspec.to_builtins(response), service_pb2.ModelStatisticsResponse())
    (stats,) = response.model_stats
    assert message.model_stats[0].inference_stats.compute_infer.ns == stats.inference_stats.compute_infer.ns
    assert message.model_stats[0].batch_stats[1].batch_size == 3


# A version-1 part as a member sends it, stored once: later fields must come with defaults.
PART_V1 = (b'{"version":1,"member":"agent.sleep-0","members":["shard.shard-0","agent.sleep-0"],'
           b'"members_complete":true,"part":0,"parts":1,"model_stats":[{"name":"mlp","version":"1",'
           b'"last_inference":1764430000123,"inference_count":3,"execution_count":1,"inference_stats":{'
           b'"success":{"count":3,"ns":900},"fail":{"count":0,"ns":0},"queue":{"count":3,"ns":300},'
           b'"compute_input":{"count":3,"ns":30},"compute_infer":{"count":3,"ns":600},'
           b'"compute_output":{"count":3,"ns":60},"cache_hit":{"count":0,"ns":0},"cache_miss":{"count":0,"ns":0}},'
           b'"batch_stats":[{"batch_size":3,"compute_input":{"count":1,"ns":10},"compute_infer":{"count":1,"ns":200},'
           b'"compute_output":{"count":1,"ns":20}}]}]}')


def test_version_1_parts_still_decode() -> None:
    part = stats_part_decoder.decode(PART_V1)
    assert part.members_complete and part.members == ["shard.shard-0", "agent.sleep-0"]
    (model,) = part.model_stats
    assert model.inference_stats.compute_infer == StatisticDuration(3, 600)
    assert model.batch_stats[0].compute_output == StatisticDuration(1, 20)
    assert msgspec.json.encode(part) == PART_V1  # and this version writes the very same bytes
