"""The OIP v2 gateway against a live cluster, through the official Triton clients (tritonclient's
HTTP and gRPC clients, unchanged) and raw HTTP for what those clients never send (bad bodies)."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from gateway.service import Gateway, GatewaySettings
from runtime.client import SymphonyClient
from runtime.coalesce import CoalescingSender
from schemas.status import CONTENT_MSGPACK
from schemas.tensors import encode_request
from tests.integration.conftest import SLEEP_CONFIG, running_cluster

pytestmark = pytest.mark.asyncio


async def _gateway(url: str) -> Gateway:
    gateway = Gateway(GatewaySettings(nats_url=url, http_port=0, grpc_port=0, metrics_port=0))
    await gateway.start()
    return gateway


def _host(address: str) -> str:
    return address.split("://", 1)[1]


def _triton_session(http_url: str, grpc_url: str) -> dict:
    """Everything a Triton user does first, with both official clients (run in a thread: they
    block). Clients are closed and collected here, in the thread that made them (gevent)."""
    seen: dict = {}
    hc = thttp.InferenceServerClient(_host(http_url))
    gc_ = tgrpc.InferenceServerClient(_host(grpc_url))
    try:
        seen["http_ready"] = (hc.is_server_live(), hc.is_server_ready(), hc.is_model_ready("resnet_sleep"),
                              hc.is_model_ready("no_such_model"))
        seen["http_server"] = hc.get_server_metadata()
        seen["http_meta"] = hc.get_model_metadata("fast_sleep")
        seen["http_config"] = hc.get_model_config("fast_sleep")
        x = np.array([[1.0], [2.0], [3.5]], np.float32)
        binary = thttp.InferInput("x", [3, 1], "FP32")
        binary.set_data_from_numpy(x)
        reply = hc.infer("resnet_sleep", [binary], request_id="req-7")
        seen["http_binary"] = (reply.as_numpy("y"), reply.get_response())
        as_json = thttp.InferInput("x", [1, 1], "FP32")
        as_json.set_data_from_numpy(x[:1], binary_data=False)
        reply = hc.infer("fast_sleep", [as_json], outputs=[thttp.InferRequestedOutput("y", binary_data=False)])
        seen["http_json"] = reply.get_response()
        seen["grpc_ready"] = (gc_.is_server_live(), gc_.is_server_ready(), gc_.is_model_ready("resnet_sleep"),
                              gc_.is_model_ready("no_such_model"))
        seen["grpc_meta"] = gc_.get_model_metadata("resnet_sleep", as_json=True)
        seen["grpc_config"] = gc_.get_model_config("resnet_sleep", as_json=True)
        tensor = tgrpc.InferInput("x", [3, 1], "FP32")
        tensor.set_data_from_numpy(x)
        reply = gc_.infer("resnet_sleep", [tensor], request_id="g-1", client_timeout=5.0)
        seen["grpc_infer"] = (reply.as_numpy("y"), reply.get_response(as_json=True))
        seen["http_stats"] = hc.get_inference_statistics("resnet_sleep")
        seen["grpc_stats"] = gc_.get_inference_statistics("resnet_sleep", as_json=True)
        for door, client, infer_input in (("http", hc, thttp.InferInput), ("grpc", gc_, tgrpc.InferInput)):
            wrong = infer_input("not_x", [1, 1], "FP32")
            wrong.set_data_from_numpy(x[:1])
            for case, model, inputs in (("unknown_model", "no_such_model", [wrong]),
                                        ("wrong_input", "resnet_sleep", [wrong])):
                try:
                    client.infer(model, inputs)
                    seen[f"{door}_{case}"] = None
                except InferenceServerException as error:
                    seen[f"{door}_{case}"] = (error.status(), error.message())
    finally:
        hc.close()
        gc_.close()
        del hc, gc_
        gc.collect()
    return seen


async def test_tritonclient_http_and_grpc_get_metadata_readiness_and_results(nats_server, tmp_path):
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path):
        gateway = await _gateway(nats_server.url)
        try:
            seen = await asyncio.to_thread(_triton_session, gateway.addresses["http"], gateway.addresses["grpc"])
        finally:
            await gateway.stop()
    assert seen["http_ready"] == (True, True, True, False)
    assert seen["grpc_ready"] == (True, True, True, False)
    assert seen["http_server"]["name"] == "symphony" and "binary_tensor_data" in seen["http_server"]["extensions"]
    assert seen["http_meta"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    assert seen["http_config"]["max_batch_size"] == 64
    assert seen["grpc_meta"]["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "1"]}]
    assert seen["grpc_config"]["config"]["max_batch_size"] == 128
    # The sleep models echo their input: a batch of 3 comes back as 3 rows, in order.
    values, response = seen["http_binary"]
    np.testing.assert_array_equal(values, [[1.0], [2.0], [3.5]])
    assert response["id"] == "req-7" and response["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert seen["http_json"]["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]
    values, response = seen["grpc_infer"]
    np.testing.assert_array_equal(values, [[1.0], [2.0], [3.5]])
    assert response["id"] == "g-1"
    # Triton's statistics extension: the 6 items of the two batches of 3, all successful
    for stats in (seen["http_stats"], seen["grpc_stats"]):
        (model_stats,) = stats["model_stats"]
        assert model_stats["name"] == "resnet_sleep"
        assert int(model_stats["inference_count"]) == 6
        assert int(model_stats["inference_stats"]["success"]["count"]) == 6
        assert sum(int(b["compute_infer"]["count"]) for b in model_stats["batch_stats"]) == \
            int(model_stats["execution_count"])
    assert seen["http_unknown_model"][0] == "404" and "no_such_model" in seen["http_unknown_model"][1]
    assert seen["http_wrong_input"][0] == "400" and "not_x" in seen["http_wrong_input"][1]
    assert seen["grpc_unknown_model"][0] == "StatusCode.NOT_FOUND"
    assert seen["grpc_wrong_input"][0] == "StatusCode.INVALID_ARGUMENT"


def _post(http_url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(_host(http_url), timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _body(data: object, *, shape=(1, 1), datatype="FP32", extra: dict | None = None) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": list(shape), "datatype": datatype, "data": data}],
                       **(extra or {})}).encode()


BINARY_HEAD = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
BAD_HTTP = [  # (name, path, body, headers, status, words in the error)
    ("malformed_json", "/v2/models/fast_sleep/infer", b"{not json", {}, 400, "malformed"),
    ("no_inputs", "/v2/models/fast_sleep/infer", b'{"inputs": []}', {}, 400, "malformed"),
    ("string_data", "/v2/models/fast_sleep/infer", _body(["a"]), {}, 400, "numbers only"),
    ("count_mismatch", "/v2/models/fast_sleep/infer", _body([1, 2]), {}, 400, "2 values"),
    ("bytes_datatype", "/v2/models/fast_sleep/infer", _body([1], datatype="BYTES"), {}, 400, "datatype"),
    ("batch_disagrees_with_shape", "/v2/models/fast_sleep/infer", _body([1, 2], shape=(2, 1, 1)), {}, 400, "shape"),
    ("binary_overrun", "/v2/models/fast_sleep/infer", BINARY_HEAD + b"\0\0",  # 2 bytes where 4 are promised
     {"Inference-Header-Content-Length": str(len(BINARY_HEAD))}, 400, "binary"),
    ("bad_header_length", "/v2/models/fast_sleep/infer", _body([1]), {"Inference-Header-Content-Length": "99999"},
     400, "Inference-Header-Content-Length"),
    ("bad_slo", "/v2/models/fast_sleep/infer", _body([1]), {"Symphony-Slo-Ms": "-3"}, 400, "SLO"),
    ("bad_timeout_param", "/v2/models/fast_sleep/infer", _body([1], extra={"parameters": {"timeout": "soon"}}),
     {}, 400, "timeout"),
    ("unsupported_encoding", "/v2/models/fast_sleep/infer", _body([1]), {"Content-Encoding": "br"}, 400, "gzip"),
    ("unknown_model", "/v2/models/nope/infer", _body([1]), {}, 404, "nope"),
    ("invalid_model_name", "/v2/models/a%2Eb/infer", _body([1]), {}, 404, "invalid model name"),
    ("unknown_version", "/v2/models/fast_sleep/versions/7/infer", _body([1]), {}, 404, "version"),
    ("unknown_output", "/v2/models/fast_sleep/infer", _body([1], extra={"outputs": [{"name": "z"}]}), {}, 400, "z"),
    ("too_large_item", "/v2/models/fast_sleep/infer", _body([0.5] * 300_000, shape=(1, 300_000)), {}, 413, ""),
    ("deadline_passed", "/v2/models/fast_sleep/infer", _body([1]), {"Symphony-Deadline": "1000"}, 504, "expired"),
]


async def test_bad_http_inputs_get_the_documented_codes_and_nothing_is_lost(nats_server, tmp_path):
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path):
        gateway = await _gateway(nats_server.url)
        http_url = gateway.addresses["http"]
        try:
            for name, path, body, headers, status, words in BAD_HTTP:
                code, _, reply = await asyncio.to_thread(_post, http_url, path, body, headers)
                assert code == status, (name, code, reply)
                assert words in json.loads(reply)["error"], (name, reply)
            # still serving, and the request id travels back
            code, reply_headers, reply = await asyncio.to_thread(
                _post, http_url, "/v2/models/fast_sleep/infer", _body([[2.5]], extra={"id": "abc"}),
                {"Symphony-Request-Id": "r-1", "Symphony-Slo-Ms": "500"})
            assert code == 200, reply
            assert json.loads(reply)["id"] == "abc" and reply_headers["symphony-request-id"] == "r-1"
            assert json.loads(reply)["outputs"][0]["data"] == [2.5]  # nested data, flattened
            assert gateway.forwarder.sender.batches_open == 0
        finally:
            await gateway.stop()


async def test_requests_submitted_together_travel_in_one_batch_message(nats_server, tmp_path):
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _, _):
        sender = CoalescingSender(client.nc)
        await sender.start()
        bodies = [encode_request({"x": np.full((1, 1), i, np.float32)}, CONTENT_MSGPACK) for i in range(20)]
        futures = [sender.submit("resnet_sleep", body) for body in bodies]
        abandoned = sender.submit("resnet_sleep", bodies[0])
        abandoned.cancel()  # a caller that gives up before the flush: not sent, nothing kept
        results = await asyncio.gather(*futures)
        assert sender.messages_sent == 1
        assert [r.status for r in results] == [200] * 20
        assert [float(r.outputs["y"][0, 0]) for r in results] == list(range(20))
        gone = sender.submit("resnet_sleep", bodies[0], slo_ms=1e4)
        await asyncio.sleep(0)  # sent; then the caller gives up before the reply
        gone.cancel()
        await asyncio.sleep(0.3)
        assert sender.batches_open == 0
        await sender.stop()


async def test_grpc_deadline_travels_as_the_requests_deadline(nats_server, tmp_path):
    """A gRPC call's own deadline is the request's: shorter than any batch can meet, the shard
    drops it (504, DEADLINE_EXCEEDED) instead of running it after the client gave up."""
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path):
        gateway = await _gateway(nats_server.url)
        try:
            async with grpc.aio.insecure_channel(_host(gateway.addresses["grpc"])) as channel:
                from tritonclient.grpc import service_pb2 as pb

                infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                            request_serializer=pb.ModelInferRequest.SerializeToString,
                                            response_deserializer=pb.ModelInferResponse.FromString)
                request = pb.ModelInferRequest(model_name="resnet_sleep", raw_input_contents=[
                    np.float32(1).tobytes()])
                request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await infer(request, timeout=0.002)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                reply = await infer(request, timeout=5.0, metadata=(("symphony-slo-ms", "400"),))
                assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [1.0]
                assert time.monotonic() - started < 5.0
        finally:
            await gateway.stop()


async def test_gateway_answers_like_calling_nats_directly(nats_server, tmp_path):
    """The same request through the gateway and straight to NATS gives the same outputs."""
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path):
        gateway = await _gateway(nats_server.url)
        direct = await SymphonyClient.connect(nats_server.url)
        try:
            x = np.array([[4.25]], np.float32)
            code, _, reply = await asyncio.to_thread(
                _post, gateway.addresses["http"], "/v2/models/fast_sleep/infer", _body([4.25]))
            straight = await direct.infer("fast_sleep", {"x": x})
            assert code == 200 and straight.ok
            assert json.loads(reply)["outputs"][0]["data"] == straight.outputs["y"].reshape(-1).tolist()
        finally:
            await direct.close()
            await gateway.stop()
