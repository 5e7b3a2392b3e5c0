"""Consumer groups declared by the operator (`[[groups]]` in jetgate.toml).

Only declared groups are open to `Subscribe`: a gRPC client names a group, it never sets
its settings. Each declaration is a `consumers.ConsumerGroup` (the same runtime the
Python workers use), its consumer created or updated at start-up like the streams.

```toml
[[groups]]
name = "audit"
stream = "ORDERS"
filter_subjects = ["orders.>"]   # empty: the whole stream
event_types = ["shop.v1.*"]      # globs of the types its members may receive; empty: every
                                 # type routed to the stream. Others are dead-lettered
                                 # (unknown-type).
max_deliver = 5
backoff = ["1s", "5s", "30s"]
ack_wait = "30s"
max_ack_pending = 1000
```
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.group import ConsumerGroup
from jetgate.errors import ConfigurationError


class GroupDeclarationError(ConfigurationError, ValueError):
    """A `[[groups]]` entry is invalid; the message names the group."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """One declared consumer group (see the module docstring); durations in seconds."""

    name: str
    stream: str
    filter_subjects: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0)
    ack_wait: float = 30.0
    max_ack_pending: int = 1000
    description: str = ""

    def __post_init__(self) -> None:
        try:
            self.consumer_group()
        except ValueError as exc:
            raise GroupDeclarationError(f"groups.{self.name}: {exc}") from None

    def consumer_group(self) -> ConsumerGroup:
        """The group's runtime settings, with no handlers registered."""
        return ConsumerGroup(
            self.name,
            stream=self.stream,
            filter_subjects=self.filter_subjects,
            max_deliver=self.max_deliver,
            backoff=self.backoff,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            description=self.description,
        )
