"""`[[groups]]` in jetgate.toml: what load_config accepts and refuses, and the consumer a
declaration becomes (pure; the reconciliation is tests/integration/test_declared_groups.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from consumers import consumer
from consumers.delivery import Delivery
from gateway.banner import groups_line
from gateway.config import ConfigError, load_config
from gateway.groups import GroupConfig, GroupDeclarationError, declared_consumer_config
from jetgate import wire
from jetgate.errors import ConfigurationError
from jetgate.examples.orders.v1 import orders_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]

BASE = """\
[[streams]]
name = "ORDERS"
subjects = ["orders.>"]

[[streams]]
name = "AUDIT"
subjects = ["audit.>"]
"""


def _load(tmp_path: Path, groups: str) -> tuple[GroupConfig, ...]:
    path = tmp_path / "jetgate.toml"
    path.write_text(BASE + groups)
    return load_config(path, env={}).groups


def test_a_full_declaration(tmp_path: Path) -> None:
    (group,) = _load(
        tmp_path,
        """
[[groups]]
name = "audit"
stream = "ORDERS"
filter_subjects = ["orders.OrderPlaced.>", "orders.OrderPaid.>"]
event_types = ["jetgate.examples.orders.v1.*"]
max_deliver = 3
backoff = ["500ms", "2s", "1m"]
ack_wait = "45s"
max_ack_pending = 64
description = "audit trail"
""",
    )
    assert group == GroupConfig(
        name="audit",
        stream="ORDERS",
        filter_subjects=("orders.OrderPlaced.>", "orders.OrderPaid.>"),
        event_types=("jetgate.examples.orders.v1.*",),
        max_deliver=3,
        backoff=(0.5, 2.0, 60.0),
        ack_wait=45.0,
        max_ack_pending=64,
        description="audit trail",
    )


def test_defaults(tmp_path: Path) -> None:
    (group,) = _load(tmp_path, '[[groups]]\nname = "audit"\nstream = "ORDERS"\n')
    assert group.filter_subjects == ()
    assert group.event_types == ()
    assert group.max_deliver == 5
    assert group.backoff == (1.0, 5.0, 30.0)
    assert group.ack_wait == 30.0
    assert group.max_ack_pending == 1000


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [('"1s,5s"', (1.0, 5.0)), ("[]", ()), ('["2m"]', (120.0,)), ("[1, 2.5]", (1.0, 2.5))],
)
def test_backoff_lists(tmp_path: Path, raw: str, seconds: tuple[float, ...]) -> None:
    (group,) = _load(tmp_path, f'[[groups]]\nname = "a"\nstream = "ORDERS"\nbackoff = {raw}\n')
    assert group.backoff == seconds


def test_several_groups_on_several_streams(tmp_path: Path) -> None:
    groups = _load(
        tmp_path,
        '[[groups]]\nname = "a"\nstream = "ORDERS"\n\n[[groups]]\nname = "b"\nstream = "AUDIT"\n',
    )
    assert [(g.name, g.stream) for g in groups] == [("a", "ORDERS"), ("b", "AUDIT")]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('name = "a"\nstream = "ORDERS"\nackwait = "5s"', "unknown setting(s) ackwait"),
        ('name = "a"\nstream = "NOPE"', "group 'a' names unknown stream 'NOPE'"),
        ('stream = "ORDERS"', "name"),
        ('name = "a"', "stream"),
        ('name = "a"\nstream = "ORDERS"\nack_wait = "soon"', "groups[0].ack_wait"),
        ('name = "a"\nstream = "ORDERS"\nack_wait = "0s"', "ack_wait must be positive"),
        ('name = "a"\nstream = "ORDERS"\nbackoff = ["1s", "x"]', "groups[0].backoff"),
        ('name = "a"\nstream = "ORDERS"\nbackoff = 5', "not a list"),
        ('name = "a"\nstream = "ORDERS"\nmax_deliver = 0', "max_deliver must be at least 1"),
        ('name = "a"\nstream = "ORDERS"\nmax_deliver = true', "not an integer"),
        ('name = "a"\nstream = "ORDERS"\nmax_ack_pending = 0', "max_ack_pending must be at"),
        ('name = "a"\nstream = "ORDERS"\nfilter_subjects = ["orders..x"]', "groups.a"),
        ('name = "a.b"\nstream = "ORDERS"', "a.b"),
    ],
)
def test_refused(tmp_path: Path, table: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _load(tmp_path, f"[[groups]]\n{table}\n")
    assert problem in str(caught.value)


def test_duplicate_names_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="group names must be unique"):
        _load(
            tmp_path,
            '[[groups]]\nname = "a"\nstream = "ORDERS"\n\n'
            '[[groups]]\nname = "a"\nstream = "AUDIT"\n',
        )


def test_a_bad_declaration_is_a_configuration_error() -> None:
    with pytest.raises(GroupDeclarationError, match=r"groups\.a: ack_wait") as caught:
        GroupConfig(name="a", stream="ORDERS", ack_wait=-1)
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.exit_code == 2


def test_the_demo_declares_one_group() -> None:
    (group,) = load_config(REPO_ROOT / "jetgate.toml", env={}).groups
    assert group.name == "audit"
    assert group.stream == "ORDERS"
    assert group.filter_subjects == ("orders.>",)


def test_the_consumer_of_a_declaration() -> None:
    group = GroupConfig(
        name="audit",
        stream="ORDERS",
        filter_subjects=("orders.>",),
        event_types=("shop.v1.*", "jetgate.examples.orders.v1.OrderPlaced"),
        max_deliver=3,
        backoff=(1.0, 10.0),
        ack_wait=20.0,
    )
    config = declared_consumer_config(group)
    assert config.durable_name == "audit"
    assert config.filter_subjects == ["orders.>"]
    assert config.ack_wait == 20.0
    assert config.max_deliver == 4  # one more: the runtime dead-letters it (consumers/group.py)
    assert config.metadata == {
        wire.DECLARED_METADATA: wire.DECLARED_BY_CONFIG,
        wire.EVENT_TYPES_METADATA: "shop.v1.*,jetgate.examples.orders.v1.OrderPlaced",
        wire.BACKOFF_METADATA: "1s,10s",
        wire.MAX_DELIVER_METADATA: "3",
    }
    assert "declared in the gateway's configuration" in (config.description or "")
    assert consumer.is_declared(config)
    every_type = declared_consumer_config(GroupConfig(name="all", stream="ORDERS"))
    assert (every_type.metadata or {})[wire.EVENT_TYPES_METADATA] == "*"


def test_members_of_a_declared_group_compare_settings_not_types() -> None:
    group = GroupConfig(name="audit", stream="ORDERS", filter_subjects=("orders.>",))
    declared = declared_consumer_config(group)
    python = group.consumer_group()

    @python.handler(orders_pb2.OrderPlaced)  # the description and types metadata now differ
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...

    assert python.consumer_config().description != declared.description
    assert consumer.differences(declared, python.consumer_config()) == []
    other = GroupConfig(
        name="audit",
        stream="ORDERS",
        filter_subjects=("orders.OrderPlaced.>", "orders.OrderPaid.>"),
        ack_wait=10.0,
        max_deliver=2,
        backoff=(),
        max_ack_pending=7,
    )
    assert consumer.differences(declared, other.consumer_group().consumer_config()) == [
        ("filter_subjects", "[orders.>]", "[orders.OrderPaid.>, orders.OrderPlaced.>]"),
        ("ack_wait", "30s", "10s"),
        ("max_deliver", "5", "2"),
        ("backoff", "1s,5s,30s", "-"),
        ("max_ack_pending", "1000", "7"),
    ]


def test_the_banner_lists_the_declared_groups() -> None:
    config = load_config(REPO_ROOT / "jetgate.toml", env={})
    assert groups_line(config) == "Consumer groups open to Subscribe: audit on ORDERS (orders.>)"
    two = dataclasses.replace(
        config, groups=(*config.groups, GroupConfig(name="all", stream="ORDERS"))
    )
    assert groups_line(two).endswith("audit on ORDERS (orders.>), all on ORDERS")
