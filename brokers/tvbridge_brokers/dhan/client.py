"""The real dhanhq client, run off the event loop with our own timeout.

dhanhq 2.3 is synchronous (`requests`, 60 s default timeout) and points at `https://api.dhan.co/v2`. We set its
`DhanHTTP.base_url` (so tests reach a local fake Dhan API) and `DhanHTTP.timeout` (so a hung call's thread ends
soon after we stop waiting for it), run each call in the default executor inside `asyncio.timeout`, and classify
what comes back with `errors.classify`. A call we stopped waiting for is still tracked, so `aclose()` can let it
finish before the HTTP session closes.

The token lives only inside dhanhq's objects and `_secret` (used to scrub text); `repr` shows neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any

from dhanhq import DhanContext, dhanhq

from tvbridge_brokers.dhan.errors import Answer, classify, scrub

if TYPE_CHECKING:
    from tvbridge_brokers.dhan.settings import DhanSettings

CLOSE_GRACE_S = 1.0
HTTP_TIMEOUT_MARGIN_S = 0.5
"""requests' own timeout runs this much past ours: our timeout must be the one that fires, so a slow answer is
always reported the same way (and resolved by lookup), not as whichever timer a loaded machine ran first. Less
than CLOSE_GRACE_S, so an abandoned call still ends before `aclose()` stops waiting for it."""


class DhanClient:
    """One dhanhq instance for one token. Replaced as a whole when the token changes."""

    def __init__(self, settings: DhanSettings) -> None:
        context = DhanContext(settings.client_id, settings.access_token)
        http = context.get_dhan_http()
        http.base_url = settings.base_url
        http.timeout = settings.timeout_s + HTTP_TIMEOUT_MARGIN_S
        self._http = http
        self._api = dhanhq(context)
        self._secret = settings.access_token
        self._timeout = settings.timeout_s
        self._base_url = settings.base_url
        self._inflight: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"<DhanClient {self._base_url} timeout={self._timeout:g}s>"

    @property
    def token(self) -> str:
        """The token this client sends (to tell whether a DH-901 was for the token in use now)."""
        return self._secret

    def scrub(self, text: str) -> str:
        return scrub(text, self._secret)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._inflight.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved, so a late failure of an abandoned call is not reported as unhandled

    async def call(self, method: str, /, *args: object, **kwargs: object) -> Answer:
        """Run `dhanhq.<method>` in a thread; a timeout or an exception is an ambiguous answer."""
        function = getattr(self._api, method)
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args, **kwargs))
        self._inflight.add(future)
        future.add_done_callback(self._done)
        try:
            async with asyncio.timeout(self._timeout):
                response = await asyncio.shield(future)
        except TimeoutError:
            return Answer(ok=False, ambiguous=f"no answer from Dhan within {self._timeout:g} s")
        except Exception as e:  # noqa: BLE001 - dhanhq validates some arguments by raising bare Exception
            return Answer(ok=False, ambiguous=f"dhanhq raised {type(e).__name__}: {self.scrub(str(e))[:200]}")
        return classify(response, secret=self._secret)

    async def aclose(self) -> None:
        """Let abandoned calls end (their requests timeout bounds them), then close the HTTP session."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self._timeout + CLOSE_GRACE_S)
        with contextlib.suppress(Exception):
            self._http.session.close()
