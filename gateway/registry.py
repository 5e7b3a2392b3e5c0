"""The type registry: the protobuf event types the gateway accepts.

Types come from two kinds of sources, named in the gateway config:

- generated Python modules (`*_pb2`, imported by dotted name): every TOP-LEVEL message of
  the module's own `.proto` file is registered. Messages of the files it imports are not
  (list their modules too), nor are nested messages: a nested message (including map
  entries) is part of its enclosing type, and its simple name would not be a distinct subject
  token (`a.v1.Order.Line` and `a.v1.Line` would both be `Line`).
- `FileDescriptorSet` files (`protoc --include_imports --descriptor_set_out=FILE ...`): each
  set is loaded into its own `DescriptorPool`, so it never clashes with generated modules
  or other sets, and every top-level message of every file in the set is registered, except
  files whose package is (or is under) one of `DEPENDENCY_PACKAGES`: well-known types and
  common Google API protos that `--include_imports` pulls in are dependencies, not events.
  This lets one gateway serve types of services written in other languages.

One full name registered by two sources is accepted when both define the same type (the
message and every message and enum it reaches through its fields, compared as serialized
descriptors, ignoring `json_name` values protoc fills in by default); the first source
wins. Different definitions raise `RegistryError` naming both sources.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message

from jetgate.errors import ConfigurationError

# Packages whose files in a FileDescriptorSet are treated as dependencies only.
DEPENDENCY_PACKAGES: Final = ("google.protobuf", "google.rpc", "google.api", "google.type")


class RegistryError(ConfigurationError, ValueError):
    """A type source cannot be loaded, or two sources define one type differently."""


class UnknownTypeError(LookupError):
    """The full proto name is not a registered event type."""


class PayloadError(ValueError):
    """The payload bytes do not parse as the named type."""


@dataclass(frozen=True, slots=True)
class _Entry:
    message_class: type[Message]
    source: str
    fingerprint: bytes


class TypeRegistry:
    """Registered event types by full proto name (e.g. `jetgate.examples.orders.v1.OrderPlaced`).

    Build it with `TypeRegistry.load`; it is not changed afterwards.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @classmethod
    def load(
        cls, modules: Sequence[str] = (), descriptor_sets: Sequence[str | Path] = ()
    ) -> TypeRegistry:
        """A registry of the types of `modules` (dotted `*_pb2` names), then `descriptor_sets`.

        Raises RegistryError when a module does not import or is not generated protobuf
        code, a file is unreadable or not a complete FileDescriptorSet, or two sources
        define the same full name differently.
        """
        registry = cls()
        for name in modules:
            file = _import_file_descriptor(name)
            registry._add(file.message_types_by_name.values(), f"module {name}")
        for path in descriptor_sets:
            pool = descriptor_pool.DescriptorPool()
            for file_proto in _read_descriptor_set(pool, Path(path)):
                if _is_dependency_package(file_proto.package):
                    continue
                file = pool.FindFileByName(file_proto.name)
                source = f"descriptor set {path} ({file_proto.name})"
                registry._add(file.message_types_by_name.values(), source)
        return registry

    def names(self) -> frozenset[str]:
        """Full proto names of all registered types."""
        return frozenset(self._entries)

    def __contains__(self, full_name: object) -> bool:
        return full_name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def source(self, full_name: str) -> str:
        """Where the type was registered from, e.g. `module a.v1.orders_pb2` (for logs)."""
        return self._entry(full_name).source

    def message_class(self, full_name: str) -> type[Message]:
        """The message class of a registered type; raises UnknownTypeError otherwise."""
        return self._entry(full_name).message_class

    def parse(self, full_name: str, data: bytes) -> Message:
        """Parse `data` (protobuf binary) as the registered type `full_name`.

        Unknown fields are kept (senders may use a newer schema). Raises UnknownTypeError
        for an unregistered type and PayloadError when the bytes are not a valid message.
        """
        message = self.message_class(full_name)()
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            raise PayloadError(f"payload is not a valid {full_name}: {exc}") from None
        return message

    def _entry(self, full_name: str) -> _Entry:
        try:
            return self._entries[full_name]
        except KeyError:
            raise UnknownTypeError(f"{full_name!r} is not a registered event type") from None

    def _add(self, descriptors: Iterable[Descriptor], source: str) -> None:
        for descriptor in descriptors:
            fingerprint = _fingerprint(descriptor)
            known = self._entries.get(descriptor.full_name)
            if known is None:
                message_class = message_factory.GetMessageClass(descriptor)
                self._entries[descriptor.full_name] = _Entry(message_class, source, fingerprint)
            elif known.fingerprint != fingerprint:
                raise RegistryError(
                    f"type {descriptor.full_name} is defined differently by {known.source} "
                    f"and by {source}"
                )


def _import_file_descriptor(module_name: str) -> FileDescriptor:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code; report whatever it raised
        raise RegistryError(
            f"type module {module_name!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    file = getattr(module, "DESCRIPTOR", None)
    if not isinstance(file, FileDescriptor):
        raise RegistryError(
            f"type module {module_name!r} is not a generated protobuf module (*_pb2) "
            "with a file DESCRIPTOR"
        )
    return file


def _read_descriptor_set(
    pool: descriptor_pool.DescriptorPool, path: Path
) -> list[descriptor_pb2.FileDescriptorProto]:
    """Add every file of the set at `path` to `pool` (dependencies first); return the files."""
    hint = "write it with protoc --include_imports --descriptor_set_out"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"descriptor set {path}: {exc.strerror or exc}") from None
    try:
        files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    except DecodeError:
        raise RegistryError(f"descriptor set {path}: not a FileDescriptorSet ({hint})") from None
    if not files:
        raise RegistryError(f"descriptor set {path}: holds no .proto files ({hint})")
    by_name: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for file in files:
        if by_name.setdefault(file.name, file) != file:
            raise RegistryError(f"descriptor set {path}: file {file.name!r} appears twice")
    added: set[str] = set()

    def add(name: str, importer: str) -> None:
        if name in added:
            return
        file = by_name.get(name)
        if file is None:
            raise RegistryError(
                f"descriptor set {path}: {importer} imports {name!r}, which the set "
                f"does not hold ({hint})"
            )
        added.add(name)  # before the dependencies: an import cycle fails in pool.Add
        for dependency in file.dependency:
            add(dependency, repr(name))
        try:
            pool.Add(file)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"descriptor set {path}: file {name!r}: {exc}") from None

    for name in by_name:
        add(name, "the set")
    return list(by_name.values())


def _is_dependency_package(package: str) -> bool:
    return any(package == p or package.startswith(p + ".") for p in DEPENDENCY_PACKAGES)


def _fingerprint(descriptor: Descriptor) -> bytes:
    """Serialized descriptors of `descriptor` and every type it reaches, in name order."""
    reached: dict[str, Descriptor | EnumDescriptor] = {}
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in reached:
            continue
        reached[current.full_name] = current
        for field in current.fields:
            if field.message_type is not None:
                pending.append(field.message_type)
            if field.enum_type is not None:
                reached.setdefault(field.enum_type.full_name, field.enum_type)
    parts: list[bytes] = []
    for name in sorted(reached):
        item = reached[name]
        proto: descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto
        if isinstance(item, Descriptor):
            proto = descriptor_pb2.DescriptorProto()
            item.CopyToProto(proto)
            _clear_default_json_names(proto)
        else:
            proto = descriptor_pb2.EnumDescriptorProto()
            item.CopyToProto(proto)
        parts.append(name.encode() + b"\0" + proto.SerializeToString(deterministic=True))
    return b"\0\0".join(parts)


def _clear_default_json_names(proto: descriptor_pb2.DescriptorProto) -> None:
    """Drop `json_name`s equal to protoc's default: protoc's descriptor sets hold them all,
    generated modules only the ones set explicitly in the `.proto`."""
    for field in (*proto.field, *proto.extension):
        if field.json_name == _default_json_name(field.name):
            field.ClearField("json_name")
    for nested in proto.nested_type:
        _clear_default_json_names(nested)


def _default_json_name(name: str) -> str:
    """protoc's ToJsonName: drop each '_' and upper-case the character after it."""
    out: list[str] = []
    upper_next = False
    for char in name:
        if char == "_":
            upper_next = True
        else:
            out.append(char.upper() if upper_next else char)
            upper_next = False
    return "".join(out)
