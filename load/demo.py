"""The demo's load mix: requests per second per model of `ops/demo.toml`, what `make demo` sends
(ops/demo.py) and what the soak scales (load/bench/soak.py)."""

DEMO_RATES = {"mlp": 80.0, "cnn": 15.0, "encoder": 15.0, "resnet_sleep": 400.0}
