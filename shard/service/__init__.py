"""The shard's NATS shell around the pure core."""
