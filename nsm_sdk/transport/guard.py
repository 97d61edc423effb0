"""Refuse RPCs that did not come through the ServerRelay.

grpcio's backend listens on an abstract socket, which every process in the netns (every container of
a pod) can reach. A call arriving there directly would skip the relay's fd passing and, once TLS is in
the relay, its authentication. The relay binds each backend connection to a name it knows, so a peer
it does not know is refused with PERMISSION_DENIED. Behaviours must be grpc.aio style (async).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

_Behaviour = Callable[..., Any]
if TYPE_CHECKING:  # the stubs' generics are not subscriptable at run time
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _InterceptorBase: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    _InterceptorBase = grpc.aio.ServerInterceptor
_NOT_RELAYED = "connection did not come through the relay"


class RelayOnlyInterceptor(_InterceptorBase):
    """Wraps every handler with a check of `context.peer()` against `is_relayed`."""

    def __init__(self, is_relayed: Callable[[str], bool]) -> None:
        self._is_relayed = is_relayed

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler: _Handler | None = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpcio answers UNIMPLEMENTED
            return None  # type: ignore[return-value]
        return self._guarded(handler)

    async def _check(self, context: _Context) -> None:
        if not self._is_relayed(context.peer()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _NOT_RELAYED)

    def _guarded(self, handler: _Handler) -> _Handler:
        serializers = (handler.request_deserializer, handler.response_serializer)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(self._wrap(handler.stream_stream), *serializers)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(self._wrap(handler.stream_unary), *serializers)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(self._wrap(handler.unary_stream), *serializers)
        return grpc.unary_unary_rpc_method_handler(self._wrap(handler.unary_unary), *serializers)

    def _wrap(self, behaviour: _Behaviour | None) -> _Behaviour:
        assert behaviour is not None, "grpc handler without a behaviour for its kind"
        check = self._check
        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: Any, context: _Context) -> AsyncIterator[Any]:
                await check(context)
                async for item in behaviour(request, context):
                    yield item

            return streaming

        async def single(request: Any, context: _Context) -> Any:
            await check(context)
            return await behaviour(request, context)

        return single
