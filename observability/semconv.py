"""Attribute names and values of jetgate's spans and metrics (OpenTelemetry semantic
conventions for messaging, plus the NATS and jetgate specific ones).

Spans carry the full subject (`messaging.destination.name`, which includes the event key);
metrics never do: a key per time series would be unbounded. Metrics are labelled with the
stream, the event type and the group instead.
"""

from __future__ import annotations

from typing import Final

MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_MESSAGE_BODY_SIZE: Final = "messaging.message.body.size"
MESSAGING_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

NATS_STREAM: Final = "messaging.nats.stream"
NATS_SEQUENCE: Final = "messaging.nats.sequence"
NATS_DELIVERY_COUNT: Final = "messaging.nats.delivery_count"
NATS_DUPLICATE: Final = "messaging.nats.duplicate"

EVENT_TYPE: Final = "jetgate.event.type"
EVENT_KEY: Final = "jetgate.event.key"
# What the worker did with a delivery: ack, retry, dead_letter or skip (redriven for another group).
OUTCOME: Final = "jetgate.outcome"
DEAD_LETTER_REASON: Final = "jetgate.dead_letter.reason"
DEAD_LETTER_SUBJECT: Final = "jetgate.dead_letter.subject"

# `messaging.system` has no registered value for NATS yet.
SYSTEM_NATS: Final = "nats"
OPERATION_SEND: Final = "send"
OPERATION_PROCESS: Final = "process"
OPERATION_RECEIVE: Final = "receive"
PUBLISH: Final = "publish"
PROCESS: Final = "process"

# The span event a dead-lettered delivery's process span carries.
DEAD_LETTER_EVENT: Final = "jetgate.dead_letter"
