"""gRPC server reflection (v1 and v1alpha) over every file the gateway serves or accepts.

grpcio-reflection's servicer answers from one descriptor pool and only v1alpha. With the
upb pool it cannot resolve method symbols (`jetgate.v1.EventGateway.Publish`: "Symbol not
found", which breaks `grpcurl describe` and ghz), and types loaded from descriptor sets live
in pools of their own, so a reflection client could not encode an `Any` payload of them.

This servicer indexes, once at start-up, the files of the served services, the error detail
types (`google.rpc.BadRequest`, ...), and the file of every registered event type, with all
their imports: files by name and symbols (messages, enums, services, methods, extensions) by
full name. The first file seen for a name wins, in the order above, then the type registry's
order; an answer carries the file and its imports from its own pool, so it is consistent.

v1 and v1alpha have the same messages field for field (only the package differs), so one
handler serves both with the v1alpha message classes. The v1 service's own descriptor is
the v1alpha file renamed, so `grpcurl describe` resolves every service that `list` shows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gateway.registry import TypeRegistry

V1ALPHA: Final = "grpc.reflection.v1alpha.ServerReflection"
V1: Final = "grpc.reflection.v1.ServerReflection"
_METHOD: Final = "ServerReflectionInfo"


class ReflectionIndex:
    """Files by name and the file defining each symbol, over `roots` and their imports."""

    def __init__(self, roots: Iterable[FileDescriptor]) -> None:
        self.files: dict[str, FileDescriptor] = {}
        self.symbols: dict[str, FileDescriptor] = {}
        # (extendee full name, field number) -> file defining the extension
        self.extensions: dict[tuple[str, int], FileDescriptor] = {}
        seen: set[int] = set()
        for root in roots:
            self._add_with_imports(root, seen)

    def _add_with_imports(self, file: FileDescriptor, seen: set[int]) -> None:
        if id(file) in seen:
            return
        seen.add(id(file))
        self.files.setdefault(file.name, file)
        for name in _symbols(file):
            self.symbols.setdefault(name, file)
        for extension in _extensions(file):
            key = (extension.containing_type.full_name, extension.number)
            self.extensions.setdefault(key, file)
        for dependency in file.dependencies:
            self._add_with_imports(dependency, seen)

    def closure(self, file: FileDescriptor) -> list[bytes]:
        """`file` and everything it imports (from its own pool), serialized, file first."""
        out: list[bytes] = []
        for item in reversed(file_closure(file)):
            proto = descriptor_pb2.FileDescriptorProto()
            item.CopyToProto(proto)
            out.append(proto.SerializeToString())
        return out


def file_closure(file: FileDescriptor) -> list[FileDescriptor]:
    """`file` and every file it imports, transitively, each after its own imports (so
    `file` is last): the order a `FileDescriptorSet` must have to load file by file."""
    ordered: dict[str, FileDescriptor] = {}
    visiting: set[str] = set()
    # Iterative post-order walk: deep import chains cannot exhaust the recursion limit.
    stack: list[tuple[FileDescriptor, bool]] = [(file, False)]
    while stack:
        current, expanded = stack.pop()
        if current.name in ordered:
            continue
        if expanded:
            ordered[current.name] = current
            continue
        if current.name in visiting:  # protobuf refuses import cycles; never loop anyway
            continue
        visiting.add(current.name)
        stack.append((current, True))
        stack.extend((d, False) for d in reversed(current.dependencies))
    return list(ordered.values())


class ReflectionServicer:
    """Answers `ServerReflectionInfo` for both protocol versions from one index."""

    def __init__(self, services: Sequence[str], index: ReflectionIndex) -> None:
        self._services = tuple(sorted({*services, V1, V1ALPHA}))
        self._index = index

    async def info(self, requests: AsyncIterator[Any], context: object) -> AsyncIterator[Any]:
        """The bidirectional reflection stream: one response per request, in order."""
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: Any) -> Any:
        """The response to one `ServerReflectionRequest`."""
        index = self._index
        kind = request.WhichOneof("message_request")
        file: FileDescriptor | None = None
        if kind == "list_services":
            return reflection_pb2.ServerReflectionResponse(
                original_request=request,
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[reflection_pb2.ServiceResponse(name=s) for s in self._services]
                ),
            )
        if kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            if name not in index.symbols:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"type {name} not found")
            numbers = sorted(n for (t, n) in index.extensions if t == name)
            return reflection_pb2.ServerReflectionResponse(
                original_request=request,
                all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                    base_type_name=name, extension_number=numbers
                ),
            )
        if kind == "file_by_filename":
            file = index.files.get(request.file_by_filename)
        elif kind == "file_containing_symbol":
            file = index.symbols.get(request.file_containing_symbol)
        elif kind == "file_containing_extension":
            wanted = request.file_containing_extension
            file = index.extensions.get((wanted.containing_type, wanted.extension_number))
        else:
            return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "unknown request kind")
        if file is None:
            return _error(request, grpc.StatusCode.NOT_FOUND, f"{kind} not found")
        return reflection_pb2.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=index.closure(file)
            ),
        )


def enable_reflection(
    server: grpc.aio.Server,
    services: Sequence[str],
    served: Iterable[FileDescriptor],
    registry: TypeRegistry,
) -> None:
    """Serve reflection v1 and v1alpha on `server` for `services` (defined in `served`
    files), the error detail types and every type of `registry`."""
    roots = [
        *served,
        reflection_pb2.DESCRIPTOR,
        _v1_file(),
        error_details_pb2.DESCRIPTOR,
        *(registry.message_class(name).DESCRIPTOR.file for name in sorted(registry.names())),
    ]
    servicer = ReflectionServicer(services, ReflectionIndex(roots))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.info,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {_METHOD: handler}) for name in (V1, V1ALPHA)]
    )


def _error(request: Any, code: grpc.StatusCode, message: str) -> Any:
    return reflection_pb2.ServerReflectionResponse(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(
            error_code=code.value[0], error_message=message
        ),
    )


def _v1_file() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto: the v1alpha file under the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", new
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(f".{old}.", f".{new}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    pool = descriptor_pool.DescriptorPool()
    return pool.AddSerializedFile(proto.SerializeToString())


def _symbols(file: FileDescriptor) -> Iterable[str]:
    for message in file.message_types_by_name.values():
        yield from _message_symbols(message)
    for enum in file.enum_types_by_name.values():
        yield enum.full_name
    for service in file.services_by_name.values():
        yield service.full_name
        for method in service.methods:
            yield method.full_name
    for extension in file.extensions_by_name.values():
        yield extension.full_name


def _message_symbols(message: Descriptor) -> Iterable[str]:
    yield message.full_name
    for nested in message.nested_types:
        yield from _message_symbols(nested)
    for enum in message.enum_types:
        yield enum.full_name
    for extension in message.extensions:
        yield extension.full_name


def _extensions(file: FileDescriptor) -> Iterable[Any]:
    yield from file.extensions_by_name.values()
    pending = list(file.message_types_by_name.values())
    while pending:
        message = pending.pop()
        yield from message.extensions
        pending.extend(message.nested_types)
