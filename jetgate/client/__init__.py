"""A batching async Python client for jetgate (docs/python-client.md).

    from jetgate.client import Client

    async with Client("127.0.0.1:50051") as client:
        stored = await client.publish(order_placed, key="o-42")

`jetgate` is the ground layer: this package uses grpc and the generated stubs only.
"""

from jetgate.client.client import Client
from jetgate.client.connection import ConnectionSettings, TlsSettings, token_file
from jetgate.client.errors import (
    DeadlineExceeded,
    InvalidEvent,
    PermissionDenied,
    PreconditionFailed,
    PublishError,
    ResourceExhausted,
    Unavailable,
)
from jetgate.client.result import Published
from jetgate.client.settings import BatchSettings, RetrySettings

__all__ = [
    "BatchSettings",
    "Client",
    "ConnectionSettings",
    "DeadlineExceeded",
    "InvalidEvent",
    "PermissionDenied",
    "PreconditionFailed",
    "PublishError",
    "Published",
    "ResourceExhausted",
    "RetrySettings",
    "TlsSettings",
    "Unavailable",
    "token_file",
]
