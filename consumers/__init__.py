"""Consumer groups: Python services processing the events jetgate stored, as competing workers.

```python
from consumers import ConsumerGroup, Delivery, Reject

group = ConsumerGroup("billing", stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"])

@group.handler(orders_pb2.OrderPlaced)
async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...
```
Run it with `jetgate consume my.module:group`, or `Worker(group, nc).run(stop)`.
"""

from typing import TYPE_CHECKING

from consumers.delivery import Delivery, HandBack, Reject, Retry
from consumers.group import ConsumerGroup, GroupConfigError

if TYPE_CHECKING:
    from consumers.handling import WorkerStats
    from consumers.worker import Worker

__all__ = [
    "ConsumerGroup",
    "Delivery",
    "GroupConfigError",
    "HandBack",
    "Reject",
    "Retry",
    "Worker",
    "WorkerStats",
]


def __getattr__(name: str) -> object:
    # The runtime (and its telemetry) is imported when first asked for: the gateway's
    # configuration builds ConsumerGroups, and `jetgate decode` loads it per message.
    if name == "Worker":
        from consumers.worker import Worker

        return Worker
    if name == "WorkerStats":
        from consumers.handling import WorkerStats

        return WorkerStats
    raise AttributeError(f"module 'consumers' has no attribute {name!r}")
