"""The admission's turns on the worker threads (`Admission.executing`): at most `max_executing` at once, handed
on in arrival order; a waiter with a deadline gets DEADLINE_EXCEEDED when it passes and takes no turn; one
without waits as long as it takes; a cancelled waiter leaves the queue; and a gateway limited to one turn still
answers concurrent clients, each once, none refused."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.budgets.ledger import GrantKey
from gateway.errors import DeadlineExceededError
from gateway.rpc.admission import Admission, AdmissionLimits
from gateway.rpc.server import start_gateway
from tests.helpers import Env, channel_for, isolated_settings


def _admission(turns: int) -> Admission:
    return Admission(AdmissionLimits(max_executing=turns))


def test_at_most_max_executing_run_at_once_in_arrival_order() -> None:
    """Six steps, two turns: never more than two inside at once, and they enter in the order they arrived."""

    async def main() -> tuple[int, list[int]]:
        adm = _admission(2)
        inside = peak = 0
        order: list[int] = []

        async def step(i: int) -> None:
            nonlocal inside, peak
            async with adm.executing():
                inside += 1
                peak = max(peak, inside)
                order.append(i)
                await asyncio.sleep(0.02)
                inside -= 1

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(step(i)))
            await asyncio.sleep(0)  # arrival order = creation order
        await asyncio.gather(*tasks)
        assert adm.executing_now == 0
        return peak, order

    peak, order = asyncio.run(main())
    assert peak == 2
    assert order == [0, 1, 2, 3, 4, 5]


def test_a_waiter_past_its_deadline_gets_deadline_exceeded_and_others_wait_on() -> None:
    """With the one turn held: a step whose deadline passes while it waits gets DEADLINE_EXCEEDED and never
    runs; a step without a deadline outlasts it and runs once the turn is free."""

    async def main() -> None:
        adm = _admission(1)
        ran: list[str] = []
        hold = asyncio.Event()

        async def holder() -> None:
            async with adm.executing():
                await hold.wait()

        async def waiter(name: str, deadline: float | None) -> None:
            async with adm.executing(deadline=deadline):
                ran.append(name)

        h = asyncio.create_task(holder())
        await asyncio.sleep(0)
        patient = asyncio.create_task(waiter("patient", None))
        with pytest.raises(DeadlineExceededError):
            await waiter("hurried", time.monotonic() + 0.05)
        await asyncio.sleep(0.1)  # twice that wait: the patient one still waits
        assert ran == []
        hold.set()
        await asyncio.gather(h, patient)
        assert ran == ["patient"]
        assert adm.executing_now == 0

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """A waiter cancelled while queued takes no turn; the next one gets it when the holder is done."""

    async def main() -> None:
        adm = _admission(1)
        hold = asyncio.Event()
        ran: list[str] = []

        async def holder() -> None:
            async with adm.executing():
                await hold.wait()

        async def waiter(name: str) -> None:
            async with adm.executing(deadline=time.monotonic() + 30):
                ran.append(name)

        h = asyncio.create_task(holder())
        await asyncio.sleep(0)
        gone = asyncio.create_task(waiter("gone"))
        await asyncio.sleep(0)
        after = asyncio.create_task(waiter("after"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(h, after)
        assert gone.cancelled()
        assert ran == ["after"]
        assert adm.executing_now == 0

    asyncio.run(main())


@pytest.mark.integration
@pytest.mark.slow
def test_one_turn_serves_concurrent_clients_each_once(env: Env) -> None:
    """A real gateway with max_executing = 1: eight clients' queries at once are all answered, none refused,
    and the ledger holds exactly one charge each."""
    settings = dataclasses.replace(isolated_settings(env, "one-turn"), max_executing=1)
    gw = start_gateway(settings)
    try:
        def ask(i: int) -> bool:
            with channel_for(env, gw.port, "planner") as ch:
                q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
                    dataset="registry", purpose="planning",
                    sql=f"SELECT COUNT(*) AS n FROM residents WHERE birth_year > {1900 + i}",
                    request_id=uuid.uuid4().hex, privacy_loss=common_pb.PrivacyLoss(epsilon=0.01)), timeout=60)
                return True

        key = GrantKey("planner", "registry", "planning")
        before = gw.ledger.spent(key).epsilon
        with ThreadPoolExecutor(8) as pool:
            answered = list(pool.map(ask, range(8)))
        assert answered == [True] * 8
        assert gw.admission is not None and gw.admission.refused == 0
        assert gw.admission.executing_now == 0
        assert gw.ledger.spent(key).epsilon == pytest.approx(before + 8 * 0.01)
    except grpc.RpcError as exc:  # pragma: no cover - the failure message
        pytest.fail(f"a query failed: {exc}")
    finally:
        gw.stop()
