"""The Open Inference Protocol (KServe v2) gateway: HTTP/REST and gRPC front doors onto
symphony's NATS subjects, for the clients and tools people already use (tritonclient, KServe
clients, OIP load tools). Stateless: run as many as you like; each is a NATS client like any other."""
