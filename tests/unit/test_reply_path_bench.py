"""load/bench/reply_path.py: its nats-server config grants what each mode claims, and parses."""

import subprocess

from load.bench.reply_path import USERS, server_config
from runtime.nats_server import nats_server_binary


def test_only_the_forwarding_shard_has_allow_responses_and_only_agent_a_has_inboxes(tmp_path) -> None:
    assert [u for u, (_, _, responses) in USERS.items() if responses] == ["shard_b"]
    assert [u for u, (pub, _, _) in USERS.items() if "_INBOX.>" in pub] == ["agent_a"]
    text = server_config(4222, str(tmp_path / "log"))
    assert text.count("allow_responses: true") == 1
    path = tmp_path / "nats.conf"
    path.write_text(text)
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=20)
    assert checked.returncode == 0, checked.stderr + checked.stdout
