"""Who may do what: grants of actions on resource globs to principals and roles.

Default deny: a call is allowed only when some grant matches its principal (by name glob
or by one of its roles) and lists a glob matching the resource under the action. The
policy is consulted only when authentication is on; an empty policy denies everything.

Actions and their resources: `publish` on event types (full protobuf names, e.g.
`shop.v1.OrderPlaced`), `subscribe` on consumer groups (Subscribe), `read` on
streams and `admin` on groups and streams. Globs are `fnmatch.fnmatchcase` patterns
(case-sensitive; `*` also crosses dots: `shop.v1.*` matches `shop.v1.sub.X`). Principal
names are globs too (`spiffe://example.org/ns/prod/*`), roles are exact.

File format (TOML; unknown keys are errors, so a typo never silently grants or denies)::

    [[grants]]
    principals = ["spiffe://example.org/ns/shop/sa/orders"]   # and/or
    roles = ["order-writer"]
    publish = ["shop.v1.Order*"]
    subscribe = ["billing-*"]          # optional, likewise read and admin

`PolicyHolder` re-reads the file when it changes; a broken new file is logged and the
previous policy stays.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from gateway.auth.files import ReloadingFiles
from gateway.auth.principal import Principal


class Action(enum.StrEnum):
    """What a grant allows."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    READ = "read"
    ADMIN = "admin"


class PolicyError(ValueError):
    """A policy file that cannot be used (the message names the file and the grant)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """Resource globs per action, for principals (name globs) and roles."""

    principals: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()
    resources: Mapping[Action, tuple[str, ...]]

    def applies_to(self, principal: Principal) -> bool:
        """True when the grant names `principal` or one of its roles."""
        if not self.roles.isdisjoint(principal.roles):
            return True
        return any(fnmatchcase(principal.name, glob) for glob in self.principals)

    def covers(self, action: Action, resource: str) -> bool:
        """True when one of the action's globs matches `resource`."""
        return any(fnmatchcase(resource, glob) for glob in self.resources.get(action, ()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A set of grants; everything not granted is denied."""

    grants: tuple[Grant, ...] = ()

    def allows(self, principal: Principal, action: Action | str, resource: str) -> bool:
        """True when a grant lets `principal` do `action` on `resource`."""
        act = Action(action)
        return any(g.covers(act, resource) and g.applies_to(principal) for g in self.grants)


_SUBJECT_KEYS = ("principals", "roles")
_KEYS = frozenset({*_SUBJECT_KEYS, *(a.value for a in Action)})


def _globs(item: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PolicyError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """The policy of a policy file's text; raises PolicyError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML ({exc})") from exc
    if unknown := set(data) - {"grants"}:
        raise PolicyError(f"{source}: unknown keys {sorted(unknown)}")
    raw = data.get("grants", [])
    if not isinstance(raw, list):
        raise PolicyError(f"{source}: grants must be an array of tables ([[grants]])")
    grants: list[Grant] = []
    for i, item in enumerate(raw):
        where = f"{source}: grants[{i}]"
        if not isinstance(item, dict):
            raise PolicyError(f"{where}: must be a table")
        if unknown := set(item) - _KEYS:
            raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
        principals = _globs(item, "principals", where)
        roles = frozenset(_globs(item, "roles", where))
        if not principals and not roles:
            raise PolicyError(f"{where}: names no principals and no roles")
        resources = {a: _globs(item, a.value, where) for a in Action if a.value in item}
        if not any(resources.values()):
            raise PolicyError(f"{where}: grants no action (publish, subscribe, read, admin)")
        grants.append(Grant(principals=principals, roles=roles, resources=resources))
    return Policy(grants=tuple(grants))


def load_policy(path: Path) -> Policy:
    """The policy in the file at `path`; raises PolicyError or OSError."""
    return parse_policy(path.read_text(encoding="utf-8"), source=str(path))


class PolicyHolder:
    """The policy of a file, re-read when the file changes (checked every `min_interval` s).

    Construct at start-up (a broken file raises); `allows` is the current policy's.
    """

    def __init__(self, path: Path, *, min_interval: float = 1.0) -> None:
        self.path = path
        self._files = ReloadingFiles(
            [path], lambda: load_policy(path), what="policy", min_interval=min_interval
        )

    @property
    def policy(self) -> Policy:
        """The current policy (re-read first if due and changed)."""
        return self._files.current()

    def refresh(self) -> bool:
        """Re-read the file now if it changed (e.g. on SIGHUP); True when reloaded."""
        return self._files.refresh()

    def allows(self, principal: Principal, action: Action | str, resource: str) -> bool:
        """`Policy.allows` of the current policy."""
        return self.policy.allows(principal, action, resource)
