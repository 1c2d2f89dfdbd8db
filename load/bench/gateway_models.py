"""Every demo model through one gateway, by both official Triton clients.

Starts the demo cluster as `symphony up` does (ops/demo.toml: JAX models and a sleep model, NATS
users, one gateway), then for each model the gateway lists, with `tritonclient.http` and
`tritonclient.grpc` unchanged: readiness, metadata, configuration, inference on a batch of
random valid inputs (outputs checked against the metadata's shapes and datatypes), the
documented errors for a wrong input name and an unknown model, and the statistics that count
those calls. Prints one row per model and client; exits 1 if any check failed.

    python -m load.bench.gateway_models [--config ops/demo.toml] [--batch 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from runtime.cluster import LocalCluster
from runtime.cluster_config import DEMO_CONFIG


def random_batch(meta: dict, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in meta["inputs"]:
        shape = [batch] + [int(d) for d in spec["shape"][1:]]
        dtype = triton_to_np_dtype(spec["datatype"])
        inputs[spec["name"]] = (rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f"
                                else rng.integers(0, 2, shape).astype(dtype))
    return inputs


def check_model(kind: str, client, module, model: str, batch: int, rng: np.random.Generator) -> list[str]:  # noqa: ANN001
    """What failed for this model through this client (empty: all passed)."""
    as_json = {"as_json": True} if kind == "grpc" else {}
    failed = []
    if not client.is_model_ready(model):
        failed.append("not ready")
    meta = client.get_model_metadata(model, **as_json)
    config = client.get_model_config(model, **as_json)
    config = config.get("config", config)
    if int(config["max_batch_size"]) < 1:
        failed.append("config without max_batch_size")
    inputs = []
    for name, array in random_batch(meta, batch, rng).items():
        tensor = module.InferInput(name, list(array.shape), _datatype(meta, name))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, headers={"Symphony-Slo-Ms": "5000"} if kind == "http" else None)
    for spec in meta["outputs"]:
        out = result.as_numpy(spec["name"])
        want = [batch] + [int(d) for d in spec["shape"][1:]]
        if out is None or list(out.shape) != want or out.dtype != triton_to_np_dtype(spec["datatype"]):
            failed.append(f"output {spec['name']}: {None if out is None else (out.shape, out.dtype)} != {want}")
    expected = {"wrong input": {"http": "400", "grpc": "INVALID_ARGUMENT"},
                "unknown model": {"http": "404", "grpc": "NOT_FOUND"}}
    for case, target, name in (("wrong input", model, "not_an_input"),
                               ("unknown model", "no_such_model", meta["inputs"][0]["name"])):
        tensor = module.InferInput(name, [1, 1], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.float32))
        try:
            client.infer(target, [tensor])
            failed.append(f"{case}: answered 200")
        except InferenceServerException as error:
            if expected[case][kind] not in str(error.status()):
                failed.append(f"{case}: {error.status()} {error.message()}")
    stats = client.get_inference_statistics(model, **as_json)["model_stats"]
    if not stats or int(stats[0]["inference_stats"]["success"]["count"]) < batch:
        failed.append(f"statistics: {stats}")
    return failed


def _datatype(meta: dict, name: str) -> str:
    return next(spec["datatype"] for spec in meta["inputs"] if spec["name"] == name)


def run_checks(http_url: str, grpc_url: str, batch: int) -> list[tuple[str, str, list[str]]]:
    rng = np.random.default_rng(15)
    rows = []
    http = thttp.InferenceServerClient(http_url.split("://")[1], network_timeout=120.0)
    grpc = tgrpc.InferenceServerClient(grpc_url.split("://")[1])
    try:
        models = [m["name"] for m in http.get_model_repository_index()]
        for model in models:
            for kind, client, module in (("http", http, thttp), ("grpc", grpc, tgrpc)):
                try:
                    failed = check_model(kind, client, module, model, batch, rng)
                except InferenceServerException as error:
                    failed = [f"{error.status()} {error.message()}"]
                rows.append((model, kind, failed))
                print(f"{model:14s} {kind:5s} {'ok' if not failed else 'FAILED: ' + '; '.join(failed)}", flush=True)
    finally:
        http.close()
        grpc.close()
    return rows


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(args.config, log_dir=Path(tmp) / "logs", gateway=True)
        try:
            print("starting the cluster (models compile and profile first)...", flush=True)
            await cluster.start()
            gw = cluster.gateway_addresses
            print(f"gateway {gw['http']} {gw['grpc']}", flush=True)
            rows = await asyncio.to_thread(run_checks, gw["http"], gw["grpc"], args.batch)
        finally:
            cluster.stop()
    failed = [row for row in rows if row[2]]
    print(f"{len(rows) - len(failed)}/{len(rows)} model x client checks passed")
    return 1 if failed or not rows else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--batch", type=int, default=3)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
