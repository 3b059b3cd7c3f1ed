"""The one layer every RPC passes before its handler: identity, role, revocation, deadline, admission, audit.

`GovernanceInterceptor` wraps the handler of every method the server answers -- the gateway's own services,
the health service and reflection alike -- so no RPC reaches a handler without:

1. a deadline that has not passed (DEADLINE_EXCEEDED otherwise, before anything is done);
2. an identity: the verified client certificate's common name (UNAUTHENTICATED without one), known to the
   live policy unless the method's rule accepts any certificate of the CA (UNAUTHENTICATED otherwise);
3. admission (`gateway.rpc.admission`): RESOURCE_EXHAUSTED with RetryInfo when the identity or the server
   is over its limits;
4. authorisation on a worker thread, against the live policy snapshot the whole call then uses: one of the
   method's roles, and neither the member nor its organisation revoked (PERMISSION_DENIED otherwise);
5. the request's limits (`gateway.rpc.limits`): a message that cannot be decoded, or a field over its limit,
   is INVALID_ARGUMENT (audited, one log line), checked before the handler sees it -- for a request
   stream, each message as it arrives;
6. the handler (for the gateway's own methods a `Body`, run on a worker thread with the `Call`);
7. one audit entry for the call, whatever its outcome, written before the answer leaves (if it cannot be
   written the answer is withheld); successful health checks are counted in the metrics only.

Errors leave as `google.rpc.Status` with ErrorInfo (`gateway.rpc.status`); anything unexpected is
INTERNAL with an incident id, and its details stay in the server log.

The asyncio server receives a unary request's message before the handler runs, and no worker thread is
held while a client is slow to send: streams that never send a message cost no thread, and a streaming
body reads its messages with a per-message timeout (`message_timeout_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from gateway.errors import (
    ConfigError,
    DeadlineExceededError,
    GatewayError,
    GatewayInternalError,
    MethodNotAllowedError,
    StorageUnavailableError,
    UnauthenticatedError,
)
from gateway.path.calls import CURRENT_CALL, Call
from gateway.release.logs import log_context
from gateway.rpc.admission import Admission
from gateway.rpc.limits import check_request, lenient
from gateway.rpc.methods import RULES, MethodRule
from gateway.rpc.status import status_for, trailing_metadata

__all__ = ["Body", "Gate", "GovernanceInterceptor", "Runner", "certificate_identity", "register"]

MAX_NAME_CHARS = 128  # dataset, purpose and request_id (gateway.rpc.limits)

log = logging.getLogger("gateway.rpc")

T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]  # run(fn, *args) on a worker thread, inside the call's policy session


class Gate(Protocol):
    """What the interceptor asks of the governance runtime."""

    def is_member(self, identity: str) -> bool:
        """True when `identity` is a member of the live policy (cheap: no storage access)."""

    def session(self, call: Call) -> AbstractContextManager[None]:
        """On a worker thread: pin the live policy snapshot for the call (sets `call.policy`), and check
        `call.rule`'s roles and revocations against it.

        Raises:
            GatewayError: PERMISSION_DENIED (role, revoked) or UNAUTHENTICATED.
        """

    def audit(self, call: Call, error: GatewayError | None) -> None:
        """Append the call's audit entry (on a worker thread).

        Raises:
            AuditError: it could not be written; the answer must not leave.
        """


@dataclass(frozen=True, slots=True)
class Body:
    """A gateway method body, registered in place of a gRPC behaviour and run by the interceptor.

    `unary`: `fn(request, call) -> response`, run on a worker thread. `stream`: an async
    `fn(requests, call, run) -> Iterator[response]` for client-streaming methods: it reads `requests`
    (an async iterator with the per-message timeout), does its work through `run(fn, *args)` on worker
    threads, and returns the responses to send once its answer is final (the audit entry is written between
    the two).
    """

    fn: Callable[..., Any]
    kind: Literal["unary", "stream"] = "unary"

    def __call__(self, *args: Any) -> Any:
        """A Body is only ever called through the interceptor."""
        raise GatewayInternalError("a gateway method was served without the governance interceptor")


def certificate_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The verified certificate's single UTF-8 common name.

    Raises:
        UnauthenticatedError: no verified certificate, or no single UTF-8 common name.
    """
    auth = context.auth_context()
    if list(auth.get("transport_security_type") or ()) != [b"ssl"]:
        raise UnauthenticatedError("a client certificate is required")
    names = list(auth.get("x509_common_name") or ())
    if len(names) != 1:
        raise UnauthenticatedError("the client certificate has no single common name")
    try:
        return bytes(names[0]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnauthenticatedError("the client certificate's common name is not UTF-8") from exc


class _Timed:
    """A request stream whose next message must arrive within `timeout_s`."""

    def __init__(self, stream: AsyncIterator[Any], timeout_s: float) -> None:
        self._it = stream.__aiter__()
        self._timeout_s = timeout_s

    def __aiter__(self) -> _Timed:
        return self

    async def __anext__(self) -> Any:
        try:
            message = await asyncio.wait_for(self._it.__anext__(), self._timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(
                f"no message on the request stream within {self._timeout_s:g} s", reason="STREAM_IDLE"
            ) from None
        check_request(message)  # decodable and within the limits, before the body keeps it
        return message


class GovernanceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every method handler of the server (see the module docstring)."""

    def __init__(self, gate: Gate, admission: Admission, pool: Executor, *,
                 rules: Mapping[str, MethodRule] = RULES, message_timeout_s: float = 10.0) -> None:
        """Govern calls with `gate` and `admission`; run blocking work on `pool`."""
        self.gate = gate
        self.admission = admission
        self.pool = pool
        self.rules = rules
        self.message_timeout_s = message_timeout_s

    async def intercept_service(  # type: ignore[override]  # grpc accepts None (UNIMPLEMENTED)
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The method's handler, wrapped; a method without an access rule is refused (and audited)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        method = str(handler_call_details.method)
        rule = self.rules.get(method)
        if rule is None:
            service, _, name = method.strip("/").rpartition("/")
            rule = MethodRule(service.rpartition(".")[2], name, frozenset({"-"}))
            return self._wrap(handler, rule, refuse=True)
        return self._wrap(handler, rule)

    # -- wrapping ----------------------------------------------------------------------------------

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], rule: MethodRule, *, refuse: bool = False
              ) -> grpc.RpcMethodHandler[Any, Any]:
        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
        inner = (handler.stream_stream if streaming_in and streaming_out else handler.stream_unary
                 if streaming_in else handler.unary_stream if streaming_out else handler.unary_unary)
        # A body that cannot be decoded reaches the call as MalformedMessage: refused and audited there.
        kwargs = {"request_deserializer": lenient(handler.request_deserializer),
                  "response_serializer": handler.response_serializer}
        if streaming_out:
            async def stream_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                async for response in self._serve_stream(inner, rule, request, context, refuse):
                    yield response

            factory = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler
            return factory(stream_out, **kwargs)

        async def unary_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self._serve_unary(inner, rule, request, context, refuse)

        factory = grpc.stream_unary_rpc_method_handler if streaming_in else grpc.unary_unary_rpc_method_handler
        return factory(unary_out, **kwargs)

    @staticmethod
    def _begin(rule: MethodRule, remaining: float | None) -> Call:
        call = Call(rule)
        if remaining is not None:
            call.deadline = call.started + remaining
        return call

    async def _admit(self, call: Call, identify: Callable[[], str], refuse: bool) -> None:
        """Steps 1-2 (in the event loop, no storage access); `identify` gives the verified certificate's name."""
        call.check_deadline("it was read")
        try:
            call.identity = identify()
        except UnauthenticatedError:
            if not call.rule.any_certificate:
                raise
        if refuse:
            raise MethodNotAllowedError(f"method {call.method} is not served")
        if not call.rule.any_certificate and not self.gate.is_member(call.identity):
            raise UnauthenticatedError("the client certificate does not identify a member of the policy")

    async def _run(self, call: Call, fn: Callable[..., T], *args: Any, first: bool = False) -> T:
        """`fn(*args)` on a worker thread inside the call's policy session and log context, in one of the
        admission's turns on the worker threads (`Admission.executing`; `first`: a unary body, which has done
        nothing yet and waits for its turn at most until the call's deadline)."""

        def work() -> T:
            with self.gate.session(call), log_context(consumer=call.identity, rpc=call.method):
                return fn(*args)

        async with self.admission.executing(deadline=call.deadline if first else None):
            future = asyncio.get_running_loop().run_in_executor(self.pool, work)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # The client went away. The body runs to its end anyway (a thread cannot be stopped), and
                # what it charged must reach the call's audit entry, so wait for it before the cancellation
                # goes on.
                with contextlib.suppress(BaseException):
                    await future
                raise

    async def _audit(self, call: Call, error: GatewayError | None, answered: bool) -> GatewayError | None:
        if call.rule.any_certificate and error is None:
            return None  # health checks: metrics only
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, self.gate.audit, call, error)
        except Exception:
            log.critical("audit entry not written; withholding the answer of %s", call.method, exc_info=True)
            if answered or error is None:  # storage: nothing leaves; a retry with the same request id replays
                return StorageUnavailableError("the call could not be audited; nothing was released; retry with "
                                               "the same request id", reason="AUDIT_UNAVAILABLE")
            return error
        return error

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], error: GatewayError) -> None:
        status = status_for(error)  # its message and metadata bounded
        await context.abort(error.code, status.message, trailing_metadata(status))

    async def _govern_unary(self, call: Call, identify: Callable[[], str], refuse: bool,
                            respond: Callable[[], Awaitable[Any]]) -> tuple[Any, GatewayError | None]:
        """Steps 1-7 of a call with one answer: admit it, run `respond` in an admission slot, audit it.

        Returns the response, or the error to send instead (audited either way). A cancelled call is audited
        as CANCELLED and the cancellation goes on.
        """
        token = CURRENT_CALL.set(call)
        response: Any = None
        error: GatewayError | None = None
        try:
            await self._admit(call, identify, refuse)
            async with self.admission.slot(call.identity):
                response = await respond()
        except GatewayError as exc:
            error = exc
        except (asyncio.CancelledError, grpc.aio.AbortError):
            await self._audit(call, _cancelled(), False)
            raise
        except Exception as exc:
            error = _unexpected(exc, call)
        finally:
            CURRENT_CALL.reset(token)
        error = await self._audit(call, error, error is None)
        return (None, error) if error is not None else (response, None)

    async def _serve_unary(self, inner: Any, rule: MethodRule, request: Any,
                           context: grpc.aio.ServicerContext[Any, Any], refuse: bool) -> Any:
        call = self._begin(rule, context.time_remaining())

        async def respond() -> Any:
            if isinstance(inner, Body):
                if inner.kind == "stream":
                    responses = await inner.fn(_Timed(request, self.message_timeout_s), call, self._runner(call))
                    return next(iter(responses))
                return await self._run(call, _bounded, inner.fn, request, call, first=True)
            await self._run(call, _nothing)
            check_request(request)
            return await inner(request, context)

        response, error = await self._govern_unary(call, lambda: certificate_identity(context), refuse, respond)
        if error is not None:
            await self._abort(context, error)
        return response

    async def invoke(self, body: Body, rule: MethodRule, request: Any, identity: str | None,
                     timeout_s: float | None) -> Any:
        """One unary gateway method called in-process (`gateway.rpc.local`), exactly as a gRPC call of it is
        served: deadline, identity, admission, policy session (live snapshot, role, revocation), request limits,
        the body, one audit entry. `identity` is the verified client certificate's common name, taken by the
        caller from its own TLS layer; None: no certificate (then only a method any certificate may call
        runs). Must be awaited on the gRPC server's event loop.

        Raises:
            GatewayError: the call's error, after it was audited.
        """
        if body.kind != "unary" or rule.client_streaming or rule.server_streaming:
            raise GatewayInternalError(f"{rule.method} is not a unary gateway method")
        call = self._begin(rule, timeout_s)

        def identify() -> str:
            if identity is None:
                raise UnauthenticatedError("a client certificate is required")
            return identity

        async def respond() -> Any:
            return await self._run(call, _bounded, body.fn, request, call, first=True)

        response, error = await self._govern_unary(call, identify, False, respond)
        if error is not None:
            raise error
        return response

    async def _serve_stream(self, inner: Any, rule: MethodRule, request: Any,
                            context: grpc.aio.ServicerContext[Any, Any], refuse: bool) -> AsyncIterator[Any]:
        call = self._begin(rule, context.time_remaining())
        token = CURRENT_CALL.set(call)
        error: GatewayError | None = None
        responses: Iterator[Any] | None = None
        try:
            await self._admit(call, lambda: certificate_identity(context), refuse)
            async with self.admission.slot(call.identity):
                if isinstance(inner, Body):
                    requests = _Timed(request, self.message_timeout_s) if rule.client_streaming else request
                    responses = await inner.fn(requests, call, self._runner(call))
                else:  # a library stream (health Watch, reflection): audited when it ends
                    await self._run(call, _nothing)
                    if rule.client_streaming:
                        request = _checked(request)
                    else:
                        check_request(request)
                    async for response in inner(request, context):
                        yield response
        except GatewayError as exc:
            error = exc
        except (asyncio.CancelledError, grpc.aio.AbortError):
            await self._audit(call, _cancelled(), False)
            raise
        except Exception as exc:
            error = _unexpected(exc, call)
        finally:
            CURRENT_CALL.reset(token)
        error = await self._audit(call, error, responses is not None)
        if error is not None:
            await self._abort(context, error)
            return
        if responses is not None:
            loop = asyncio.get_running_loop()
            while (response := await loop.run_in_executor(self.pool, next, responses, None)) is not None:
                yield response

    def _runner(self, call: Call) -> Runner:
        async def run(fn: Callable[..., T], *args: Any) -> T:
            return await self._run(call, fn, *args)

        return run


def _nothing() -> None:
    """The session alone (authorisation of a library method)."""


def _bounded(fn: Callable[[Any, Call], T], request: Any, call: Call) -> T:
    """A unary body, after its request passed `check_request` (decodable, every field within its limit). The
    call's audit entry names the request's dataset, purpose and request id even when a limit refuses it (each
    only if it is within its own limit)."""
    for name in ("dataset", "purpose", "request_id"):
        value = getattr(request, name, None)
        if isinstance(value, str) and len(value) <= MAX_NAME_CHARS:
            setattr(call.audit, name, value)
    check_request(request)
    return fn(request, call)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A library method's request stream, each message checked as it arrives."""
    async for message in requests:
        check_request(message)
        yield message


def _cancelled() -> GatewayError:
    err = GatewayError("the client cancelled the call", reason="CANCELLED")
    err.code = grpc.StatusCode.CANCELLED  # type: ignore[misc]
    return err


def now() -> float:
    """The monotonic clock the interceptor measures with."""
    return time.monotonic()


def register(server: grpc.aio.Server, service: ServiceDescriptor, bodies: Mapping[str, Body]) -> None:
    """Serve `bodies` as the methods of `service` on `server` (each must be present; the interceptor runs them).

    Raises:
        ConfigError: a method of the service has no body, or a body names no method.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    names = {m.name for m in service.methods}
    for extra in sorted(set(bodies) - names):
        raise ConfigError("gateway", f"{service.name}.{extra}", "is not a method of the service")
    for m in service.methods:
        body = bodies.get(m.name)
        if body is None:
            raise ConfigError("gateway", f"{service.name}.{m.name}", "has no body")
        request = message_factory.GetMessageClass(m.input_type)
        response = message_factory.GetMessageClass(m.output_type)
        factory = {(False, False): grpc.unary_unary_rpc_method_handler,
                   (True, False): grpc.stream_unary_rpc_method_handler,
                   (False, True): grpc.unary_stream_rpc_method_handler,
                   (True, True): grpc.stream_stream_rpc_method_handler}[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = factory(body, request_deserializer=request.FromString,
                                   response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _unexpected(exc: Exception, call: Call) -> GatewayError:
    """What the client sees of an exception that is not a GatewayError (called while it is handled, so the log
    line carries its traceback): a storage failure is UNAVAILABLE (retry with the same request id), anything else
    an internal error."""
    if isinstance(exc, sqlite3.Error):
        log.exception("storage error in %s", call.method)
        return StorageUnavailableError("the gateway's storage failed; retry with the same request id")
    error = GatewayInternalError()
    log.exception("unexpected error in %s (%s)", call.method, error.message)
    return error
