"""The gateway's translation between OIP requests and symphony's one-item requests (pure)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.oip import (
    Call,
    GatewayError,
    apply_timing,
    decode_http_infer,
    encode_http_reply,
    model_config_json,
    split_items,
    stack_outputs,
)
from schemas.model import ModelMetadata, TensorSpec
from schemas.status import Status

META = ModelMetadata(name="m", platform="jax", slo_ms=50, max_batch_size=8,
                     inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2]),
                             TensorSpec(name="k", datatype="INT32", shape=[-1])],
                     outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])])


def test_json_and_binary_inputs_decode_to_arrays():
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    head = json.dumps({"id": "a", "inputs": [
        {"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
        {"name": "k", "shape": [2], "datatype": "INT32", "data": [[7], [8]]}],  # nested: flattened
        "parameters": {"binary_data_output": True}}).encode()
    call = decode_http_infer("m", head + x.tobytes(), str(len(head)))
    np.testing.assert_array_equal(call.inputs["x"], x)
    np.testing.assert_array_equal(call.inputs["k"], [7, 8])
    assert call.id == "a" and call.binary_outputs and call.outputs is None


@pytest.mark.parametrize("body, length, words", [
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "5", "malformed"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}xx', None, "malformed"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None, "no data"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [{"a": 1}]}]}', None, "numbers only"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', None, "repeat"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "-1", "does not fit"),
])
def test_bad_http_bodies_are_400s_saying_why(body, length, words):
    with pytest.raises(GatewayError) as caught:
        decode_http_infer("m", body, length)
    assert caught.value.status == Status.BAD_REQUEST and words in caught.value.reason


def test_binary_data_no_input_claims_is_a_400():
    head = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    with pytest.raises(GatewayError, match="no input claims"):
        decode_http_infer("m", head + b"\0\0\0\0", str(len(head)))


@given(st.integers(1, 16), st.booleans())
def test_a_batch_splits_into_items_and_stacks_back_in_order(size, batched):
    x = np.random.default_rng(size).random((size, 2), dtype=np.float32)
    k = np.arange(size, dtype=np.int32)
    call = Call(model="m", inputs={"x": x, "k": k} if batched else {"x": x[0], "k": k[0]})
    items, had_batch = split_items(call, META)
    assert had_batch == batched and len(items) == (size if batched else 1)
    assert all(item["x"].shape == (1, 2) and item["k"].shape == (1,) for item in items)
    echoed = stack_outputs(call, [{"y": item["x"]} for item in items], had_batch)
    np.testing.assert_array_equal(echoed["y"], x if batched else x[0])


@pytest.mark.parametrize("inputs, words", [
    ({"x": np.zeros((2, 2), np.float32)}, "missing"),
    ({"x": np.zeros((2, 2), np.float32), "k": np.zeros(3, np.int32), "z": np.zeros(1)}, "unknown"),
    ({"x": np.zeros((2, 2), np.float32), "k": np.zeros(3, np.int32)}, "batch size"),
    ({"x": np.zeros((2, 2), np.float32), "k": np.int32(1)}, "batch dimension"),
    ({"x": np.zeros((2, 2, 2), np.float32), "k": np.zeros(2, np.int32)}, "does not fit"),
    ({"x": np.zeros((0, 2), np.float32), "k": np.zeros(0, np.int32)}, "between 1"),
])
def test_inputs_that_do_not_fit_the_model_are_400s(inputs, words):
    with pytest.raises(GatewayError) as caught:
        split_items(Call(model="m", inputs=inputs), META)
    assert caught.value.status == Status.BAD_REQUEST and words in caught.value.reason


def test_requested_outputs_filter_and_choose_binary():
    call = Call(model="m", inputs={}, id="r", outputs={"y": True})
    body, json_length = encode_http_reply(call, {"y": np.ones((1, 2), np.float32)})
    head = json.loads(body[:json_length])
    assert head["id"] == "r" and head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(body[json_length:], np.float32).tolist() == [1.0, 1.0]
    with pytest.raises(GatewayError, match="unknown outputs"):
        stack_outputs(Call(model="m", inputs={}, outputs={"nope": False}), [{"y": np.ones((1, 2))}], True)


def test_timing_takes_the_tightest_deadline_and_refuses_nonsense():
    call = Call(model="m", inputs={})
    apply_timing(call, now_ms=1_000.0, slo_ms="20", deadline_ms=1_500, timeout_us=300_000)
    assert call.slo_ms == 20 and call.deadline_ms == 1_300.0
    for bad in ({"slo_ms": "0"}, {"slo_ms": "nan"}, {"deadline_ms": "x"}, {"timeout_us": True}, {"slo_ms": [1]}):
        with pytest.raises(GatewayError):
            apply_timing(Call(model="m", inputs={}), now_ms=0.0, **bad)


def test_model_config_reports_shapes_without_the_batch_dimension():
    config = model_config_json(META)
    assert config["max_batch_size"] == 8 and config["input"][0] == {"name": "x", "data_type": "TYPE_FP32",
                                                                    "dims": [2]}
