"""A grpc.aio server interceptor that authenticates every call before its handler runs.

An interceptor only sees the method name and metadata, not the TLS peer, so it wraps the
method's handler: the wrapper authenticates with the call's context (`invocation_metadata`
and `auth_context`), aborts with UNAUTHENTICATED and an ErrorInfo if that fails, and else
sets `current_principal` and runs the handler. grpc.aio runs each call in its own task, so
the ContextVar belongs to that call only; the servicer reads it with `current_principal.get()`
to authorize each event.

Open without credentials: the health service (load balancers probe it) always, reflection
when `reflection_open` is set. Those calls see `current_principal` None.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
import grpc.aio

from gateway.auth.authenticator import Authenticator
from gateway.auth.principal import AuthError, Principal
from gateway.errors import abort

current_principal: ContextVar[Principal | None] = ContextVar("jetgate_principal", default=None)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)

Context = grpc.aio.ServicerContext[Any, Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call with `authenticator`; see the module docstring."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        open_prefixes = [HEALTH_PREFIX]
        if authenticator.settings.reflection_open:
            open_prefixes.extend(REFLECTION_PREFIXES)
        self._open = tuple(open_prefixes)

    def is_open(self, method: str) -> bool:
        """True for a method served without credentials."""
        return method.startswith(self._open)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self.is_open(handler_call_details.method):
            return handler
        return self._wrap(handler)

    async def _authenticate(self, context: Context) -> Principal:
        try:
            return self._authenticator.authenticate(
                context.invocation_metadata() or (), context.auth_context()
            )
        except AuthError as exc:
            await abort(context, exc.status())

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary is not None:
            make = grpc.unary_unary_rpc_method_handler
            behavior: Callable[..., Any] = handler.unary_unary
        elif handler.unary_stream is not None:
            make = grpc.unary_stream_rpc_method_handler
            behavior = handler.unary_stream
        elif handler.stream_unary is not None:
            make = grpc.stream_unary_rpc_method_handler
            behavior = handler.stream_unary
        elif handler.stream_stream is not None:
            make = grpc.stream_stream_rpc_method_handler
            behavior = handler.stream_stream
        else:
            return handler
        return make(
            self._guard(behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        # A streaming response may be an async generator or a coroutine writing with
        # context.write(): the wrapper keeps the same shape.
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                # Not reset: the generator may be closed from another context, and the
                # call's task (with its copy of the context) ends with the call anyway.
                current_principal.set(await self._authenticate(context))
                async for response in behavior(request, context):
                    yield response

            return stream

        async def call(request: Any, context: Context) -> Any:
            principal = await self._authenticate(context)
            token = current_principal.set(principal)
            try:
                result = behavior(request, context)
                # A plain function handler (grpc.aio allows them) returns its reply directly.
                return await result if inspect.isawaitable(result) else result
            finally:
                current_principal.reset(token)

        return call
