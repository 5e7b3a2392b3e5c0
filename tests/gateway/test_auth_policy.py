"""The authorization policy (pure logic) and the reload rule it shares with keys and tokens."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.auth.files import ReloadingFiles
from gateway.auth.policy import Action, Policy, PolicyError, PolicyHolder, parse_policy
from gateway.auth.principal import AuthMethod, Principal, permission_denied
from tests.gateway.secure_serving import write

ORDERS = "spiffe://example.org/ns/shop/sa/orders"

POLICY = f"""
[[grants]]
principals = ["{ORDERS}"]
publish = ["shop.v1.OrderPlaced"]

[[grants]]
roles = ["billing"]
publish = ["shop.v1.Payment*"]
subscribe = ["billing-*"]
read = ["SHOP"]

[[grants]]
principals = ["spiffe://example.org/ns/ops/*"]
admin = ["*"]
"""


def who(name: str, *roles: str) -> Principal:
    return Principal(name=name, roles=frozenset(roles), method=AuthMethod.MTLS)


def test_grants_by_principal_role_and_glob() -> None:
    policy = parse_policy(POLICY)
    orders = who(ORDERS)
    assert policy.allows(orders, Action.PUBLISH, "shop.v1.OrderPlaced")
    assert not policy.allows(orders, Action.PUBLISH, "shop.v1.OrderPaid")
    assert not policy.allows(orders, "subscribe", "billing-main")
    # Exact names, case-sensitive: no prefix or case slips through.
    assert not policy.allows(orders, Action.PUBLISH, "shop.v1.OrderPlacedV2")
    assert not policy.allows(orders, Action.PUBLISH, "shop.v1.orderplaced")
    assert not policy.allows(who(ORDERS + "x"), Action.PUBLISH, "shop.v1.OrderPlaced")

    billing = who("alice", "billing")
    assert policy.allows(billing, Action.PUBLISH, "shop.v1.PaymentCaptured")
    assert policy.allows(billing, "subscribe", "billing-main")
    assert policy.allows(billing, Action.READ, "SHOP")
    assert not policy.allows(billing, Action.READ, "AUDIT")
    assert not policy.allows(billing, Action.ADMIN, "SHOP")
    # A principal named like a role gets nothing from it.
    assert not policy.allows(who("billing"), Action.PUBLISH, "shop.v1.PaymentCaptured")

    ops = who("spiffe://example.org/ns/ops/sa/admin")
    assert policy.allows(ops, Action.ADMIN, "SHOP")
    assert not policy.allows(ops, Action.PUBLISH, "shop.v1.OrderPlaced")


def test_default_deny() -> None:
    nobody = who("mallory", "billing-ish")
    assert not parse_policy(POLICY).allows(nobody, Action.PUBLISH, "shop.v1.OrderPlaced")
    empty = Policy()
    for action in Action:
        assert not empty.allows(who(ORDERS), action, "anything")
    assert parse_policy("") == Policy()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[grants]]\nprincipals = ["a"]\npublsh = ["x"]\n', "unknown keys"),
        ('[[grants]]\npublish = ["x"]\n', "no principals and no roles"),
        ('[[grants]]\nroles = ["r"]\n', "grants no action"),
        ('[[grants]]\nroles = ["r"]\npublish = []\n', "grants no action"),
        ('[[grants]]\nroles = "r"\npublish = ["x"]\n', "roles must be a list"),
        ('[[grants]]\nroles = ["r"]\npublish = [""]\n', "publish must be a list"),
        ('grants = "all"\n', "array of tables"),
        ("allow_all = true\n", "unknown keys"),
        ("[[grants]\n", "not valid TOML"),
    ],
)
def test_broken_policies_are_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, source="policy.toml")


def test_permission_denied_names_the_call_not_secrets() -> None:
    status = permission_denied(who(ORDERS), "publish", "shop.v1.OrderPaid")
    assert status.code == 7  # PERMISSION_DENIED
    assert status.message == f"{ORDERS} may not publish shop.v1.OrderPaid"


def test_reload_keeps_the_old_policy_on_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "policy.toml", POLICY.encode())
    holder = PolicyHolder(path, min_interval=0)
    orders = who(ORDERS)
    assert holder.allows(orders, Action.PUBLISH, "shop.v1.OrderPlaced")

    with caplog.at_level(logging.ERROR, logger="gateway.auth.files"):
        write(path, POLICY.replace("publish =", "publsh =", 1).encode())
        assert holder.allows(orders, Action.PUBLISH, "shop.v1.OrderPlaced")
        assert not holder.refresh()  # the same broken file is not tried (nor logged) again
    assert caplog.text.count("keeping the previous version") == 1
    assert "unknown keys ['publsh']" in caplog.text

    write(path, POLICY.replace("shop.v1.OrderPlaced", "shop.v1.OrderPaid").encode())
    assert holder.allows(orders, Action.PUBLISH, "shop.v1.OrderPaid")
    assert not holder.allows(orders, Action.PUBLISH, "shop.v1.OrderPlaced")

    path.unlink()
    assert holder.allows(orders, Action.PUBLISH, "shop.v1.OrderPaid")


def test_a_broken_file_at_start_is_fatal(tmp_path: Path) -> None:
    path = write(tmp_path / "policy.toml", b"[[grants]]\n")
    with pytest.raises(PolicyError):
        PolicyHolder(path)


def test_checks_are_throttled(tmp_path: Path) -> None:
    now = [0.0]
    loads: list[str] = []
    path = write(tmp_path / "f", b"1")

    def load() -> str:
        loads.append(path.read_text())
        return loads[-1]

    files = ReloadingFiles([path], load, what="f", min_interval=5, clock=lambda: now[0])
    write(path, b"2")
    assert files.current() == "1"  # not due yet
    now[0] = 5.0
    assert files.current() == "2"
    assert files.current() == "2"
    assert loads == ["1", "2"]  # an unchanged file is not read again
