"""Wiring only: start (or reach) the sandbox, load policy and ledger, and serve gRPC over mTLS.

The server is grpcio's asyncio server on an event loop thread of its own. Every method handler is
wrapped by `gateway.rpc.interceptor.GovernanceInterceptor` (identity, role, revocation, deadline,
admission, audit); method bodies run on a pool of `max_workers` threads, never the loop. HTTP/2 limits
(`HTTP2_OPTIONS`) bound what one connection can hold. The health service reports NOT_SERVING while the
sandbox is down or being replaced (`gateway.path.supervisor`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import _async as _aio_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.budgets.alerts import AlertEngine
from gateway.budgets.governor import Governor
from gateway.budgets.ledger import Ledger
from gateway.budgets.owner import OwnerSettings, owner_caps
from gateway.errors import ConfigError, GatewayError
from gateway.path.governed import GovernedPath
from gateway.path.settle import Settler
from gateway.path.supervisor import SandboxSupervisor
from gateway.policy.policy import load_policy
from gateway.products.models.service import EvaluateProduct, TrainProduct, check_model_grants_against_catalog
from gateway.products.query.cache import ReleaseCache
from gateway.products.query.service import QueryService
from gateway.products.verification.service import VerificationCore
from gateway.release.oversight import Oversight
from gateway.rpc.admin import AdminServicer, reload_policy
from gateway.rpc.admission import Admission, AdmissionLimits
from gateway.rpc.auditing import AuditServicer
from gateway.rpc.gate import PolicyGate
from gateway.rpc.interceptor import Body, GovernanceInterceptor, register
from gateway.rpc.local import LocalCalls
from gateway.rpc.methods import PROTO_FILES, check_rules_cover
from gateway.rpc.replicas import PolicyFollower
from gateway.rpc.services import BudgetServicer, CatalogServicer, KeyServicer, ModelServicer, QueryServicer
from gateway.rpc.verification import VerificationServicer
from gateway.settings import Settings
from gateway.sizes import MAX_MESSAGE_BYTES
from gateway.storage.diskspace import DiskGuard
from gateway.storage.pg import PgDatabase, check_reachable, storage_location
from gateway.storage.state import StateStore
from sandbox.client import SandboxClient, SandboxProcess

log = logging.getLogger("gateway.rpc.server")

SERVICE_NAMES = tuple(s.full_name for f in PROTO_FILES for s in f.services_by_name.values())
# HTTP/2 and connection limits: what one connection may hold, and when idle or abusive ones are closed
# (measured against grpcio 1.85 with the raw HTTP/2 client in tests/h2abuse.py; tests/h2abuse.md has the
# figures). If an option is given twice, grpc uses the first value.
HTTP2_OPTIONS: tuple[tuple[str, int], ...] = (
    # At most 16 streams in flight per connection (a client's further calls wait in its own channel). With
    # overload protection (on by default, stated here because it is what makes the cap hold against rapid
    # reset) a stream the client reset still counts until the server has freed its call, so a HEADERS+RST_STREAM
    # flood gets REFUSED_STREAM instead of filling the server-wide queue of calls not yet handed to the
    # application. The cap is also the share of the server's call handling one connection can take.
    # max_deallocating_streams lets 16 more streams count while the server frees calls that have finished:
    # without that headroom a legitimate client that keeps 16 calls in flight gets some refused (UNAVAILABLE).
    ("grpc.max_concurrent_streams", 16),
    ("grpc.http.overload_protection", 1),
    ("grpc.http2.max_deallocating_streams", 16),
    # Client PINGs: at most one a minute while the server sends nothing; the third early one -> GOAWAY
    # ENHANCE_YOUR_CALM "too_many_pings" and close.
    ("grpc.http2.min_ping_interval_without_data_ms", 60_000),
    ("grpc.http2.max_ping_strikes", 2),
    # Server keepalive: ping a connection with open calls every minute and close it (GOAWAY ENHANCE_YOUR_CALM
    # "ping_timeout") when nothing arrives within 20 s. In grpcio 1.85 the server's wait is ping_timeout_ms;
    # keepalive_timeout_ms is set for the day it takes effect again.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.ping_timeout_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # A connection with no call for 5 minutes gets GOAWAY and is closed.
    ("grpc.max_connection_idle_ms", 300_000),
    # Every connection is recycled after 10 minutes (+-10 %): GOAWAY(NO_ERROR), then 60 s for calls in flight,
    # then closed. This is the only server-side bound on how long an idle stream (HEADERS, no message, no
    # deadline) lives.
    ("grpc.max_connection_age_ms", 600_000),
    ("grpc.max_connection_age_grace_ms", 60_000),
    # TLS and the HTTP/2 preface must be done within 10 s of the TCP accept (default 120 s).
    ("grpc.server_handshake_timeout_ms", 10_000),
    # Request headers: over 8 KiB may be refused, over 16 KiB are (RESOURCE_EXHAUSTED), per call (the defaults).
    ("grpc.max_metadata_size", 8 * 1024),
    ("grpc.absolute_max_metadata_size", 16 * 1024),
)
T = TypeVar("T")


class _LoopThread:
    """An asyncio event loop running on a daemon thread; `run` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio", daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
        async def go() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


def _service(name: str) -> ServiceDescriptor:
    """The descriptor of the gateway's service `name` (declared in one of `PROTO_FILES`)."""
    return next(f.services_by_name[name] for f in PROTO_FILES if name in f.services_by_name)


def server_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    """mTLS credentials: the server's key pair, and client certificates required from our CA."""
    try:
        ca = (tls_dir / "ca.crt").read_bytes()
        cert = (tls_dir / "server.crt").read_bytes()
        key = (tls_dir / "server.key").read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(str(exc.filename), "-", "TLS file not found (run `pgw certs`)") from exc
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


class Stoppable(Protocol):
    """A front end started on top of the gateway (the web console), stopped before it."""

    def stop(self) -> None: ...


@dataclass
class Gateway:
    """A running gateway: gRPC server, the governed path and its products, the ledger and the sandbox."""

    server: grpc.aio.Server
    port: int
    core: QueryService
    path: GovernedPath
    ledger: Ledger
    sandbox_process: SandboxProcess | None = None
    verification: VerificationCore | None = None
    health: _aio_health.HealthServicer | None = None
    oversight: Oversight | None = None
    governor: Governor | None = None
    alerts: AlertEngine | None = None
    admission: Admission | None = None
    supervisor: SandboxSupervisor | None = None
    pool: ThreadPoolExecutor | None = None
    gate: PolicyGate | None = None
    settler: Settler | None = None
    _loop: _LoopThread | None = field(default=None, repr=False)
    owner: OwnerSettings | None = None  # the data owner's settings, mirrored from the sandbox
    local: LocalCalls | None = None  # in-process calls through the same governance (the console's only way in)
    console: Stoppable | None = None  # the web console, when `gateway.console.start_console` started one
    follower: Stoppable | None = None  # follows policy reloads of other replicas on the same storage

    def roles_of(self, identity: str) -> frozenset[str]:
        """The roles the live policy gives `identity` (none when it is not a member)."""
        member = self.governor.member(identity) if self.governor is not None else None
        return member.roles if member is not None else frozenset()

    def reload_policy(self) -> None:
        """Re-read the policy file and the data owner's settings (SIGHUP); on error log it and keep the running
        ones."""
        if self.governor is None:
            return
        try:
            reload_policy(self.governor, self.owner)
        except GatewayError as exc:
            log.error("policy reload refused: %s", exc.message)

    def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for every service (the sandbox's health, see the supervisor)."""
        if self.health is None or self._loop is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        hs = self.health

        async def mark() -> None:
            for name in (*SERVICE_NAMES, ""):
                await hs.set(name, status)

        try:
            self._loop.run(mark, timeout_s=5)
        except Exception:  # the loop is stopping
            log.debug("health status not updated", exc_info=True)

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop serving, then stop the supervisor and the sandbox, and close the stores."""
        if self.console is not None:
            self.console.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        if self._loop is not None:
            self.set_serving(False)
            server = self.server
            self._loop.run(lambda: server.stop(grace))
            self._loop.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.alerts is not None:
            self.alerts.stop()
        if self.settler is not None:
            self.settler.stop()
        if self.sandbox_process is not None:
            self.sandbox_process.stop()
        self.ledger.close()
        if self.path.cache is not None:
            self.path.cache.close()
        if self.governor is not None:
            self.governor.state.close()
        if self.oversight is not None:
            self.oversight.close()  # seals the audit log


def sandbox_args(settings: Settings) -> list[str]:
    """The sandbox process's flags from the gateway's settings."""
    return ["--query-timeout-ms", str(settings.query_timeout_ms), "--memory-limit", settings.sandbox_memory_limit,
            "--storage", settings.sandbox_storage,
            "--threads", str(settings.sandbox_threads)]


def _sandbox_client(settings: Settings) -> SandboxClient:
    """The client for the sandbox: on the Unix socket, or at `sandbox_address` over mutual TLS."""
    try:
        return SandboxClient(settings.sandbox_endpoint, timeout_s=settings.sandbox_timeout_s)
    except FileNotFoundError as exc:
        key = next((k for k in ("sandbox_tls_ca", "sandbox_tls_cert", "sandbox_tls_key")
                    if str(getattr(settings, k)) in str(exc)), "sandbox_tls_ca")
        raise ConfigError("settings", key, f"{exc} (the data owner issues it: `pgw certs --owner`)") from exc
    except ssl.SSLError as exc:
        raise ConfigError("settings", "sandbox_tls_cert",
                          f"the TLS files for the sandbox are unusable ({exc.reason or exc}): "
                          "sandbox_tls_ca must be a PEM CA certificate, sandbox_tls_cert/key a matching pair") from exc


def start_gateway(settings: Settings) -> Gateway:
    """Start the sandbox (unless configured to reach a running one: `start_sandbox = false`, or a remote
    `sandbox_address`), then serve. Port 0 picks a port."""
    check_rules_cover()
    policy = load_policy(settings.policy)
    creds = server_credentials(settings.tls_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    database = storage_location(settings.storage_url, settings.ledger_path)
    if isinstance(database, PgDatabase):
        check_reachable(database)
    process: SandboxProcess | None = None
    client = _sandbox_client(settings)
    if settings.spawns_sandbox:
        process = SandboxProcess.start(settings.catalog, settings.sandbox_socket, settings.data_dir,
                                       sandbox_args(settings), ready_timeout_s=float(settings.sandbox_ready_timeout_s))
    loop: _LoopThread | None = None
    settler: Settler | None = None
    try:
        catalog = client.describe()
        check_model_grants_against_catalog(policy.model_grants, catalog, str(settings.policy))
        ledger = Ledger(database)
        oversight = Oversight.open(
            settings.state_dir, settings.policy,
            metrics_port=settings.metrics_port if settings.metrics_port >= 0 else None, database=database,
        )
        oversight.metrics.set_sandbox_up(True)
        # Before anything is served: settle what a previous process left reserved, audit what is unaudited.
        disk = DiskGuard(settings.state_dir, settings.storage_reserve_mb * 1024 * 1024)
        governor = Governor(
            settings.policy, policy, ledger, StateStore(database), owner_caps(catalog),
            {d.name: d.owner for d in catalog.datasets},
        )
        governor.checks.append(
            lambda p: check_model_grants_against_catalog(p.model_grants, catalog, str(settings.policy)))
        alerts = AlertEngine(governor)
        governor.on_outcome.append(alerts.on_outcome)
        # In the ledger's file: a release is stored in the transaction that completes its charge.
        cache = ReleaseCache(database, legacy=settings.state_dir / "cache.sqlite3")
        supervisor = SandboxSupervisor(process, client)
        path = GovernedPath(governor, ledger, client, sandbox_timeout_s=settings.sandbox_timeout_s,
                            supervisor=supervisor, cache=cache, oversight=oversight, disk=disk)
        settler = Settler(ledger, oversight, disk=disk, unsettled=path.unsettled, in_flight=path.in_flight)
        settler.start()
        queries = QueryService(catalog, governor, cache=cache)
        train = TrainProduct(catalog, governor, queries.grade_rules)
        evaluate = EvaluateProduct(catalog, governor, queries.grade_rules)
        owner = OwnerSettings(client, governor, (queries, train, evaluate))
        owner.apply(catalog)  # the caps and grade rules from the sandbox's catalog, never from the file
        verification = VerificationCore.start(
            policy.verification, client, settings.state_dir, oversight.signer,
            sandbox_timeout_s=settings.sandbox_timeout_s, oversight=oversight,
            database=database if isinstance(database, PgDatabase) else None)
        verification.supervisor = supervisor
        pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="pgw-worker")
        admission = Admission(AdmissionLimits(
            max_running=settings.max_workers, max_running_per_identity=settings.max_calls_per_identity,
            max_queued=settings.max_queued_calls, max_queued_per_identity=settings.max_queued_calls,
            queue_wait_s=settings.queue_wait_ms / 1000, max_executing=min(settings.max_executing, settings.max_workers),
        ))
        gate = PolicyGate(governor, oversight)
        interceptor = GovernanceInterceptor(gate, admission, pool,
                                            message_timeout_s=settings.stream_message_timeout_ms / 1000)
        loop = _LoopThread()
        servicers: list[tuple[ServiceDescriptor, dict[str, Body]]] = [
            (_service("QueryService"), QueryServicer(path, queries).bodies()),
            (_service("CatalogService"), CatalogServicer(queries).bodies()),
            (_service("BudgetService"), BudgetServicer(queries).bodies()),
            (_service("KeyService"), KeyServicer(oversight.signer).bodies()),
            (_service("AdminService"), AdminServicer(governor, owner).bodies()),
            (_service("VerificationService"),
             VerificationServicer(verification, disk).bodies()),
            (_service("ModelService"),
             ModelServicer(path, train, evaluate).bodies()),
            (_service("AuditService"),
             AuditServicer(oversight, governor, lambda: queries.catalog,
                           publish_organizations=settings.console_publish_organizations).bodies()),
        ]
        oversight.metrics.unacknowledged_alerts = governor.state.unacknowledged_alerts

        async def build() -> tuple[grpc.aio.Server, int, _aio_health.HealthServicer]:
            server = grpc.aio.server(
                interceptors=[interceptor],
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                         ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), *HTTP2_OPTIONS],
                maximum_concurrent_rpcs=None,
            )
            for service, bodies in servicers:
                register(server, service, bodies)
            hs = _aio_health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(hs, server)
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME), server)
            port = server.add_secure_port(settings.listen, creds)
            if port == 0:
                raise ConfigError("settings", "listen", f"cannot bind {settings.listen!r}")
            await server.start()
            for name in (*SERVICE_NAMES, ""):
                await hs.set(name, health_pb2.HealthCheckResponse.SERVING)
            return server, port, hs

        server, port, hs = loop.run(build)
        local = LocalCalls(interceptor, loop.loop, {(service.name, name): body
                                                    for service, bodies in servicers for name, body in bodies.items()})
        alerts.start()
    except BaseException:
        if loop is not None:
            loop.close()
        if settler is not None:
            settler.stop()
        if process is not None:
            process.stop()
        raise
    gateway = Gateway(server, port, queries, path, ledger, process, verification, hs, oversight, governor,
                      alerts, admission, supervisor, pool, gate, settler, loop, owner, local)
    follower = PolicyFollower(governor, owner, interval_s=settings.policy_poll_ms / 1000)
    follower.start()
    gateway.follower = follower
    supervisor.on_health.append(gateway.set_serving)
    supervisor.on_health.append(oversight.metrics.set_sandbox_up)
    supervisor.start_monitor(settings.health_interval_ms / 1000)
    log.info("gateway serving on port %d", port)
    return gateway
