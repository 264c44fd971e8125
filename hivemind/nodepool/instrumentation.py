"""The node pool's gRPC calls, counted and timed for its metrics (hivemind.metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from hivemind.metrics import NodePoolMetrics


class CallMetrics(grpc.ServerInterceptor):
    """Counts every call by method and status code, and times it by method. A streaming
    call is timed from its start to its end."""

    def __init__(self, metrics: NodePoolMetrics) -> None:
        self.metrics = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        full_name = handler_call_details.method  # type: ignore[attr-defined]
        wrapped = self._handlers.get(full_name)
        if wrapped is not None:
            return wrapped
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, full_name.rsplit("/", 1)[-1])
        self._handlers[full_name] = wrapped
        return wrapped

    def observe(self, method: str, context: grpc.ServicerContext, began: float, ok: bool) -> None:
        code = context.code()  # type: ignore[attr-defined]
        if code is not None:
            name = code.name
        elif ok:
            name = "OK"
        else:  # the client went away mid-call (a stream it cancelled): not a server error
            name = "UNKNOWN" if context.is_active() else "CANCELLED"
        self.metrics.rpc_total.labels(method, name).inc()
        self.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - began)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        observe = self.observe

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                began, ok = time.perf_counter(), False
                try:
                    reply = behavior(request, context)
                    ok = True
                    return reply
                finally:
                    observe(method, context, began, ok)

            return call

        def streaming(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                began, ok = time.perf_counter(), False
                try:
                    yield from behavior(request, context)
                    ok = True
                finally:
                    observe(method, context, began, ok)

            return call

        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                streaming(handler.unary_stream), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream), **serializers
        )
