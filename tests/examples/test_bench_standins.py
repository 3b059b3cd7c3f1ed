"""The benchmark's stand-in gateway (examples/bench/standins.py) answers without charging or auditing."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from examples.bench.standins import bare_gateway
from gateway.rpc.server import Gateway
from tests.helpers import Env, channel_for, fresh, stubs_for

pytestmark = pytest.mark.integration


def test_stand_in_answers_on_the_same_sandbox_and_writes_nothing(env: Env, gateway: Gateway, tmp_path: Path) -> None:
    """A RunQuery through the stand-in is answered (signed receipt included) by the real sandbox, and
    neither the stand-in's nor the real gateway's ledger or audit log records it."""
    assert gateway.oversight is not None
    audited = len(gateway.oversight.audit.entries())
    settings = dataclasses.replace(env.settings, start_sandbox=False)
    bare = bare_gateway(settings, tmp_path / "state-bare")
    ch = channel_for(env, bare.port, "analyst")
    try:
        rid = str(uuid.uuid4())
        resp = stubs_for(ch).query.RunQuery(q_pb.RunQueryRequest(
            dataset="registry", sql=fresh("SELECT COUNT(*) FROM residents"), purpose="testing", request_id=rid,
            privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
        assert resp.rows and resp.receipt.signature and resp.privacy_cost.epsilon > 0
        assert not [c for c in gateway.ledger.charges_between(None, None) if c["request_id"] == rid]
        assert not bare.ledger.charges_between(None, None)
        assert bare.oversight is not None and not bare.oversight.audit.entries()
        assert len(gateway.oversight.audit.entries()) == audited
    finally:
        ch.close()
        bare.stop()
