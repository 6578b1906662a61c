"""The conformance kit's venue for the Dhan broker: the fake Dhan API of `tests/brokers/fake_dhan.py`, told to
refuse one symbol and to hang after taking an order for another, and a live account pointing at it.

    pytest --tvbridge-broker=dhan --tvbridge-broker-settings=tests/support/dhan-conformance.toml

The Dhan broker and its fake come from the `dhan` branch; they are imported by name at run time so this module
type-checks before and after that merge (`tests/test_conformance.py` skips the Dhan run until then).
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

BROKER_TESTS: Final = Path(__file__).resolve().parent.parent / "brokers"
REJECTED_SECURITY_ID: Final = "11536"  # TCS: the fake answers DH-906, order rejected
HANGING_SECURITY_ID: Final = "1594"  # INFY: the fake takes the order, then never answers


@contextlib.asynccontextmanager
async def venue(settings: Mapping[str, object]) -> AsyncIterator[dict[str, object]]:
    if str(BROKER_TESTS) not in sys.path:
        sys.path.insert(0, str(BROKER_TESTS))
    fake_dhan: Any = importlib.import_module("fake_dhan")
    instruments: Any = importlib.import_module("tvbridge_brokers.dhan.instruments")
    fake = fake_dhan.FakeDhan()
    place = fake._place  # noqa: SLF001 - wrapping the fake's own handler, before start() routes to it

    async def scripted_place(request: Any) -> Any:
        security_id = str(request[fake_dhan.BODY].get("securityId"))
        if security_id == REJECTED_SECURITY_ID:
            fake.next_reply("place", fake_dhan.Misbehave.error("DH-906"))
        elif security_id == HANGING_SECURITY_ID:
            fake.next_reply("place", fake_dhan.Misbehave.hang_after_taking_order())
        return await place(request)

    fake._place = scripted_place  # noqa: SLF001 - same
    await fake.start()
    with tempfile.TemporaryDirectory() as tmp:
        master = Path(tmp) / "master.csv"
        shutil.copyfile(instruments.sample_master_path(), master)  # a live account refuses the shipped sample
        try:
            yield {
                "client_id": fake_dhan.CLIENT_ID,
                "access_token": fake_dhan.TOKEN,
                "live": True,
                "base_url": fake.base_url,
                "instruments_path": str(master),
                "max_orders_per_s": 1000,
                **settings,
            }
        finally:
            await fake.close()
