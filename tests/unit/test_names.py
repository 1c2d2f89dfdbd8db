"""Model names and ids become NATS subject tokens and KV keys (issue 7 §4): one rule each, checked
by config loading, the wire decoders, the client, the CLI and the load generator before any
subject is formed."""

import asyncio
import subprocess
import sys

import msgspec
import pytest

from load.generator import plan_from_trace
from runtime.client import SymphonyClient
from runtime.cluster_config import load_cluster_config
from schemas.limits import InvalidName, validate_identifier
from schemas.model import InvalidModelName, ModelList, validate_model_name

VALID = ["mlp", "resnet_sleep", "bert-base", "A1", "9lives", "m" * 64]
INVALID = ["", "a.b", "a*", "*", ">", "a>", "a b", " mlp", "mlp\n", "mlp\r\nPUB x 1", "_mlp", "-mlp", "m\u00f6del",
           "m" * 65, "a\tb", "a\x00b"]


@pytest.mark.parametrize("name", VALID)
def test_valid_model_names_pass_unchanged(name: str) -> None:
    assert validate_model_name(name) == name
    assert msgspec.json.decode(msgspec.json.encode({"models": [name]}), type=ModelList).models == [name]


@pytest.mark.parametrize("name", INVALID, ids=repr)
def test_invalid_model_names_are_refused_by_the_function_and_the_decoder(name: str) -> None:
    with pytest.raises(InvalidModelName, match="no dots, wildcards"):
        validate_model_name(name)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({"models": [name]}), type=ModelList)


def test_a_model_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidModelName):
        validate_model_name(None)


def test_ids_are_one_subject_token() -> None:
    assert validate_identifier("shard-0") == "shard-0"
    assert validate_identifier("_x") == "_x"
    for bad in ["", "shard.0", "s*", ">", "s 0", "s0\n", "x" * 129]:
        with pytest.raises(InvalidName):
            validate_identifier(bad, "shard id")


CONFIG = """
[[models]]
name = "NAME"
kind = "sleep:20,500"
slo_ms = 30
[[agents]]
id = "a"
slots = [{id = "s0", models = ["NAME"]}]
[[shards]]
id = "shard-0"
models = ["NAME"]
slots = ["s0"]
"""


def test_config_loading_refuses_a_model_name_with_a_dot(tmp_path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG.replace("NAME", "a.b"))
    with pytest.raises(ValueError, match=r"invalid model name 'a\.b'"):
        load_cluster_config(path)
    path.write_text(CONFIG.replace("NAME", "mlp\\n"))  # a TOML escape: the name ends in a newline
    with pytest.raises(ValueError, match="invalid model name"):
        load_cluster_config(path)
    path.write_text(CONFIG.replace("NAME", "ok-name"))
    assert load_cluster_config(path).models[0].name == "ok-name"


def test_the_client_refuses_an_invalid_name_before_sending() -> None:
    client = SymphonyClient(nc=None)  # never used: the name is refused first
    with pytest.raises(InvalidModelName):
        asyncio.run(client.infer("a.b", b"{}"))
    with pytest.raises(InvalidModelName):
        asyncio.run(client.metadata("*"))


def test_symphony_infer_with_a_dotted_name_says_what_a_name_may_be() -> None:
    # A child process: the CLI configures logging for its whole process.
    done = subprocess.run([sys.executable, "-m", "ops.cli", "infer", "a.b", "--nats-url", "nats://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "invalid model name 'a.b'" in done.stderr


def test_the_load_generator_refuses_an_invalid_trace_model() -> None:
    with pytest.raises(InvalidModelName):
        plan_from_trace([100.0, 200.0], "a.*", slo_ms=50)
