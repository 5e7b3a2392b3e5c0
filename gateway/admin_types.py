"""Admin types: the registered event types, their routes and their schemas.

A schema is a `FileDescriptorSet` of the type's `.proto` file and every file it imports,
transitively, each after its own imports (`gateway.reflection.file_closure`, the closure
reflection serves too), so a client in any language loads it file by file (e.g. into a
fresh `DescriptorPool`) and finds the type. Files come from the type's own pool: a type
loaded from a descriptor set is described as that set defined it.
"""

from __future__ import annotations

from typing import cast

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from gateway.reflection import file_closure
from gateway.registry import TypeRegistry
from gateway.routing import Router
from jetgate import wire
from jetgate.v1 import admin_pb2


def type_infos(registry: TypeRegistry, router: Router) -> list[admin_pb2.EventTypeInfo]:
    """Every registered type by full name, with its route (empty when unrouted)."""
    infos = []
    for name in sorted(registry.names()):
        route = router.route(name)
        infos.append(
            admin_pb2.EventTypeInfo(
                name=name,
                type_url=wire.type_url(name),
                stream=route.stream if route else "",
                subject_prefix=route.subject_prefix if route else "",
                file=registry.message_class(name).DESCRIPTOR.file.name,
            )
        )
    return infos


def schema(registry: TypeRegistry, name: str) -> admin_pb2.GetSchemaResponse:
    """The schema of the registered type `name`; raises UnknownTypeError for another."""
    # The upb FileDescriptor the stubs declare is the same object at run time.
    file = cast(FileDescriptor, registry.message_class(name).DESCRIPTOR.file)
    answer = admin_pb2.GetSchemaResponse(event_type=name)
    for item in file_closure(file):
        proto = descriptor_pb2.FileDescriptorProto()
        item.CopyToProto(proto)
        answer.file_descriptor_set.file.append(proto)
    return answer
