"""`symphony up` as a user runs it: separate processes, the embedded nats-server, a request
answered through the CLI and through its gateway by the official Triton clients, every role's
metrics URL printed and listed by `symphony status`, and everything it started ended on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from tests.integration.conftest import SLEEP_CONFIG
from tests.integration.test_metrics import scrape


def _through_the_gateway(http_url: str, grpc_url: str) -> None:
    """Every model, by both official clients: ready, metadata, and a batch of two echoed back."""
    x = np.array([[1.5], [2.5]], np.float32)
    for client, infer_input, as_json in ((thttp.InferenceServerClient(http_url.split("://")[1]), thttp.InferInput, {}),
                                         (tgrpc.InferenceServerClient(grpc_url.split("://")[1]), tgrpc.InferInput,
                                          {"as_json": True})):
        try:
            assert client.is_server_ready()
            for model in ("resnet_sleep", "fast_sleep"):
                assert client.is_model_ready(model)
                assert client.get_model_metadata(model, **as_json)["name"] == model
                tensor = infer_input("x", [2, 1], "FP32")
                tensor.set_data_from_numpy(x)
                np.testing.assert_array_equal(client.infer(model, [tensor]).as_numpy("y"), x)
        finally:
            client.close()


def test_up_serves_requests_and_stops_everything_it_started(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(SLEEP_CONFIG)
    env = {**os.environ, "HOME": str(tmp_path)}  # the local URL file goes under this HOME
    up = subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "--config", str(config), "--logs",
                           str(tmp_path / "logs")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    try:
        url, gateway = None, None
        deadline = time.monotonic() + 120
        while gateway is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, "symphony up exited early"
            if "symphony is up at" in line:
                url = line.split("symphony is up at ")[1].split()[0]
            if line.startswith("gateway"):
                gateway = [word for word in line.split() if "://127.0.0.1:" in word]
        assert url is not None and gateway is not None
        _through_the_gateway(*gateway)
        printed = {}  # role id -> URL, from the "metrics" block `up` prints once every role answered
        while len(printed) < 3 and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, "symphony up exited early"
            if line.startswith("  ") and "/metrics" in line:
                _role, role_id, metrics_url = line.split()
                printed[role_id] = metrics_url
        infer = subprocess.run([sys.executable, "-m", "ops.cli", "infer", "resnet_sleep", "--random"],
                               capture_output=True, text=True, env=env, timeout=60)
        assert infer.returncode == 0, infer.stdout + infer.stderr
        assert "status 200" in infer.stdout and "batch size" in infer.stdout
        listed = subprocess.run([sys.executable, "-m", "ops.cli", "models", "--nats-url", url],
                                capture_output=True, text=True, env=env, timeout=60)
        assert "resnet_sleep" in listed.stdout and "fast_sleep" in listed.stdout
        # Statistics as a client user: every shard and agent (each its own NATS user) answers.
        stats = subprocess.run([sys.executable, "-m", "ops.cli", "stats", "resnet_sleep", "--nats-url", url,
                                "--wait", "10"], capture_output=True, text=True, env=env, timeout=60)
        assert stats.returncode == 0, stats.stdout + stats.stderr
        (model,) = json.loads(stats.stdout)["model_stats"]
        assert model["name"] == "resnet_sleep" and model["inference_stats"]["success"]["count"] >= 1
        status = subprocess.run([sys.executable, "-m", "ops.cli", "status"], capture_output=True, text=True,
                                env=env, timeout=60)
        listed_urls = {line.split()[1]: line.split()[2] for line in status.stdout.splitlines()
                       if line.startswith("  ") and "/metrics" in line}
        gateway_metrics = printed.pop("gateway")  # the gateway serves no status: `up` knows its address
        assert listed_urls == printed and set(printed) == {"shard-0", "sleep-0"}, status.stdout
        assert len(set(printed.values())) == 2 and all(u.startswith("http://127.0.0.1:") for u in printed.values())
        assert "symphony_gateway_calls_total" in scrape(gateway_metrics)
        assert "symphony_shard_requests_received_total" in scrape(printed["shard-0"])
        assert "symphony_agent_replies_total" in scrape(printed["sleep-0"])
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert "stopped" in out
    leftovers = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "processes of the cluster are still running"
