"""Wiring only: start (or reach) the sandbox, load policy and ledger, and serve gRPC over mTLS."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from privacy_gateway.v1 import admin_service_pb2, budget_service_pb2, catalog_service_pb2, query_service_pb2
from privacy_gateway.v1 import admin_service_pb2_grpc as a_grpc
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb2
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.admin import AdminServicer, reload_policy
from gateway.alerts import AlertEngine
from gateway.budgets import Governor
from gateway.cache import ReleaseCache
from gateway.errors import ConfigError, GatewayError
from gateway.key_service import KEY_SERVICE_NAME, KeyServicer
from gateway.ledger import Ledger
from gateway.models import MODEL_SERVICE, add_model_service
from gateway.oversight import Oversight
from gateway.owner_settings import grade_rules, owner_caps
from gateway.policy import load_policy
from gateway.queries import QueryService
from gateway.service import BudgetServicer, CatalogServicer, QueryServicer
from gateway.settings import Settings
from gateway.state import StateStore
from gateway.supervisor import SandboxSupervisor
from gateway.verification import VerificationCore, VerificationServicer
from sandbox.client import SandboxClient, SandboxProcess

log = logging.getLogger("gateway.server")

SERVICE_NAMES = (
    query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
    catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    budget_service_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
    KEY_SERVICE_NAME,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,  # issue-gov
    v_pb2.DESCRIPTOR.services_by_name["VerificationService"].full_name,
    MODEL_SERVICE,
)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def server_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    """mTLS credentials: the server's key pair, and client certificates required from our CA."""
    try:
        ca = (tls_dir / "ca.crt").read_bytes()
        cert = (tls_dir / "server.crt").read_bytes()
        key = (tls_dir / "server.key").read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(str(exc.filename), "-", "TLS file not found (run `pgw certs`)") from exc
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


@dataclass
class Gateway:
    """A running gateway: gRPC server, query service, ledger and (optionally) its sandbox process."""

    server: grpc.Server
    port: int
    core: QueryService
    ledger: Ledger
    sandbox_process: SandboxProcess | None = None
    verification: VerificationCore | None = None
    health: health.HealthServicer = field(default_factory=health.HealthServicer)
    oversight: Oversight | None = None
    governor: Governor | None = None  # issue-gov
    alerts: AlertEngine | None = None  # issue-gov

    def reload_policy(self) -> None:
        """Re-read the policy file and the data owner's settings (SIGHUP); on error log it and keep the running
        ones."""
        if self.governor is None:
            return
        try:
            reload_policy(self.core, self.governor)
        except GatewayError as exc:
            log.error("policy reload refused: %s", exc.message)

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop serving, then stop the sandbox and close the ledger."""
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        if self.alerts is not None:
            self.alerts.stop()
        if self.sandbox_process is not None:
            self.sandbox_process.stop()
        self.ledger.close()
        if self.core.cache is not None:
            self.core.cache.close()
        if self.governor is not None:
            self.governor.state.close()
        if self.oversight is not None:
            self.oversight.close()  # seals the audit log


def start_gateway(settings: Settings) -> Gateway:
    """Start the sandbox (unless configured to reach a running one), then serve. Port 0 picks a port."""
    policy = load_policy(settings.policy)
    creds = server_credentials(settings.tls_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    process: SandboxProcess | None = None
    if settings.start_sandbox:
        extra = [
            "--query-timeout-ms", str(settings.query_timeout_ms),
            "--memory-limit", settings.sandbox_memory_limit,
            "--threads", str(settings.sandbox_threads),
        ]
        process = SandboxProcess.start(
            settings.catalog, settings.sandbox_socket, settings.data_dir, extra
        )
    try:
        client = SandboxClient(settings.sandbox_socket, timeout_s=settings.sandbox_timeout_s)
        catalog = client.describe()
        ledger = Ledger(settings.ledger_path)
        oversight = Oversight.open(
            settings.state_dir, settings.policy,
            metrics_port=settings.metrics_port if settings.metrics_port >= 0 else None,
        )
        oversight.metrics.set_sandbox_up(True)
        # -- governance state, nested budgets, the data owner's caps (from the sandbox's catalog), alerts --
        governor = Governor(
            settings.policy, policy, ledger, StateStore(settings.ledger_path), owner_caps(catalog),
            {d.name: d.owner for d in catalog.datasets},
        )
        alerts = AlertEngine(governor)
        governor.on_outcome.append(alerts.on_outcome)
        core = QueryService(
            policy, catalog, ledger, client, sandbox_timeout_s=settings.sandbox_timeout_s,
            supervisor=SandboxSupervisor(process, client), governor=governor,
            # In the ledger's file: a release is stored in the transaction that completes its charge.
            cache=ReleaseCache(settings.ledger_path, legacy=settings.state_dir / "cache.sqlite3"),
            oversight=oversight,
        )
        core.grade_rules = grade_rules(catalog)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        q_grpc.add_QueryServiceServicer_to_server(QueryServicer(core), server)
        cat_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(core), server)
        b_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(core), server)
        key_grpc.add_KeyServiceServicer_to_server(KeyServicer(oversight.signer), server)
        a_grpc.add_AdminServiceServicer_to_server(AdminServicer(core, governor), server)  # issue-gov
        verification = VerificationCore.start(policy, settings.policy, client, settings.state_dir,
                                              sandbox_timeout_s=settings.sandbox_timeout_s, oversight=oversight)
        v_grpc.add_VerificationServiceServicer_to_server(
            VerificationServicer(verification), server)
        add_model_service(server, core, settings.policy)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            server,
        )
        port = server.add_secure_port(settings.listen, creds)
        if port == 0:
            raise ConfigError("settings", "listen", f"cannot bind {settings.listen!r}")
        server.start()
        alerts.start()
        for name in (*SERVICE_NAMES, ""):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        if process is not None:
            process.stop()
        raise
    log.info("gateway serving on port %d", port)
    return Gateway(server, port, core, ledger, process, health=health_servicer, oversight=oversight,
                   governor=governor, alerts=alerts, verification=verification)
