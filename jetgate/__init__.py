"""The contract every side of jetgate shares.

Generated protobuf/gRPC stubs live under `jetgate.v1` and `jetgate.examples` (from
`proto/`, via `proto/generate.py`; never edit them). `jetgate.wire` is the hand-written
NATS wire contract: header names, subject rules and event <-> NATS message encoding.
"""
