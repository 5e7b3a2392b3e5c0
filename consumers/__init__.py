"""Consumer groups: Python services processing the events jetgate stored, as competing workers.

```python
from consumers import ConsumerGroup, Delivery, Reject

group = ConsumerGroup("billing", stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"])

@group.handler(orders_pb2.OrderPlaced)
async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...
```
Run it with `jetgate consume my.module:group`, or `Worker(group, nc).run(stop)`.
"""

from consumers.delivery import Delivery, Reject
from consumers.group import ConsumerGroup, GroupConfigError
from consumers.handling import WorkerStats
from consumers.worker import Worker

__all__ = ["ConsumerGroup", "Delivery", "GroupConfigError", "Reject", "Worker", "WorkerStats"]
