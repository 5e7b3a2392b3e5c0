"""Routing: which stream stores an event type, under which subject prefix.

Routes come from config, in file order; for each registered type the FIRST route whose
`match` (a full proto name or an `fnmatch` glob such as `acme.billing.v1.*`) matches its
full name decides. An event of type `a.v1.OrderPlaced` with key `o-42` routed with prefix
`orders` is stored on subject `orders.OrderPlaced.o-42` in the route's stream.

`Router.build` checks the whole table once, at start-up, so a bad route never surfaces as a
failed publish: prefixes must be literal subject tokens, streams must exist and capture every
subject their types produce, one prefix belongs to one stream (so the aggregate filter
`<prefix>.*.<key>` of `expected_last_key_sequence` sees every event of a key), and two types
with one simple name may not share a prefix (they would share subjects).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import RouteConfig, StreamConfig
from gateway.registry import TypeRegistry
from jetgate import wire
from jetgate.errors import ConfigurationError


class RoutingError(ConfigurationError, ValueError):
    """The routes cannot work with the registered types and configured streams.

    `problems` lists every problem found, one sentence each; the message joins them.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid routes: " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where events of one type go: subjects `<subject_prefix>.<TypeName>.<key>` in `stream`."""

    stream: str
    subject_prefix: str


class Router:
    """Routes of all registered types, built and checked once by `Router.build`."""

    def __init__(
        self,
        *,
        routes: dict[str, Route],
        streams: Sequence[str],
        unrouted: Sequence[str],
        unused: Sequence[RouteConfig],
    ) -> None:
        self._routes = dict(routes)
        self._streams = tuple(streams)
        self._unrouted = sorted(unrouted)
        self._unused = list(unused)

    @classmethod
    def build(
        cls,
        routes: Sequence[RouteConfig],
        registry: TypeRegistry,
        streams: Sequence[StreamConfig],
    ) -> Router:
        """Route every type of `registry` by the first matching entry of `routes`.

        Raises RoutingError listing every problem: an invalid subject prefix, an unknown
        stream, a prefix used with two streams, a type whose subjects
        `<prefix>.<TypeName>.*` no subject filter of its stream covers, or two types with
        the same simple name under one prefix.
        """
        problems: list[str] = []
        by_name = {s.name: s for s in streams}
        for stream in streams:
            for subject_filter in stream.subjects:
                try:
                    wire.filter_tokens(subject_filter)
                except ValueError as exc:
                    problems.append(f"stream {stream.name}: {exc}")
        prefix_streams: dict[str, str] = {}
        for index, config in enumerate(routes):
            where = f"routes[{index}] (match {config.match!r})"
            if (problem := wire.prefix_problem(config.subject_prefix)) is not None:
                problems.append(f"{where}: {problem}")
            if config.stream not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                problems.append(f"{where}: unknown stream {config.stream!r} (streams: {known})")
            owner = prefix_streams.setdefault(config.subject_prefix, config.stream)
            if owner != config.stream:
                problems.append(
                    f"{where}: subject prefix {config.subject_prefix!r} is already routed to "
                    f"stream {owner!r}; one prefix must belong to one stream, or "
                    "expected_last_key_sequence would miss events of the other stream"
                )
        if problems:
            raise RoutingError(problems)

        decided: dict[str, Route] = {}
        unrouted: list[str] = []
        used: set[int] = set()
        subjects: dict[tuple[str, str], str] = {}  # (prefix, simple name) -> full name
        for full_name in sorted(registry.names()):
            chosen = next(
                (i for i, c in enumerate(routes) if fnmatch.fnmatchcase(full_name, c.match)),
                None,
            )
            if chosen is None:
                unrouted.append(full_name)
                continue
            config = routes[chosen]
            used.add(chosen)
            where = f"type {full_name} (routes[{chosen}], match {config.match!r})"
            simple = wire.type_name(full_name)
            other = subjects.setdefault((config.subject_prefix, simple), full_name)
            if other != full_name:
                problems.append(
                    f"{where}: {other} has the same name and subject prefix, so both would "
                    f"be stored on subjects {config.subject_prefix}.{simple}.<key>"
                )
            problems.extend(_coverage_problem(where, config, simple, by_name[config.stream]))
            decided[full_name] = Route(stream=config.stream, subject_prefix=config.subject_prefix)
        if problems:
            raise RoutingError(problems)
        unused = [c for i, c in enumerate(routes) if i not in used]
        return cls(
            routes=decided, streams=[s.name for s in streams], unrouted=unrouted, unused=unused
        )

    def route(self, full_name: str) -> Route | None:
        """The route of a registered type, or None when no route matches it."""
        return self._routes.get(full_name)

    def event_types_by_stream(self) -> dict[str, list[str]]:
        """Sorted full names of the types routed to each stream; every stream is a key.

        The gateway writes this into stream metadata so `nats stream info` names them.
        """
        result: dict[str, list[str]] = {name: [] for name in self._streams}
        for full_name in sorted(self._routes):
            result[self._routes[full_name].stream].append(full_name)
        return result

    def unrouted(self) -> list[str]:
        """Sorted registered types that no route matches (publishing them fails)."""
        return list(self._unrouted)

    def unused_routes(self) -> list[RouteConfig]:
        """Routes that decide no registered type (a typo, or shadowed by earlier routes)."""
        return list(self._unused)


def _coverage_problem(
    where: str, config: RouteConfig, simple_name: str, stream: StreamConfig
) -> list[str]:
    """A problem when no subject filter of `stream` covers `<prefix>.<TypeName>.*`."""
    produced = f"{config.subject_prefix}.{simple_name}.*"
    if any(wire.subject_filter_covers(f, produced) for f in stream.subjects):
        return []
    return [
        f"{where}: subjects {produced} are not captured by stream {stream.name} "
        f"(subjects: {', '.join(stream.subjects)})"
    ]
