"""The conformance kit: tvbridge's own checks that a broker plugin keeps the rules of `tvbridge.broker`.

A plugin author runs it against their plugin with one command (pytest must be installed; the kit needs nothing
else, not even pytest-asyncio, and leaves the author's own tests alone)::

    pytest --tvbridge-broker=NAME --tvbridge-broker-settings=conformance.toml

It is a pytest plugin (entry point `pytest11`, so installing tvbridge is enough) that does nothing unless
`--tvbridge-broker` is given. Then it collects its own tests (`tvbridge/conformance/kit.py`), only those unless
paths are named on the command line too. It checks: discovery through the entry point, `api_version` and the
methods; settings validation; the lifecycle; placement of each declared order type; `lookup()` by client order
id; idempotent `place()`; rejection handling; cancel by order id and by symbol; health; and, where the venue can
be made to lose an answer, unknown outcomes and timeouts. Every broker call must return within
`call_timeout_s` (TradingView gives up after 3 s).

A generic kit cannot know how to make *your* venue refuse an order or lose an answer, so the settings file
(TOML) says it. Every key is optional except `[reject]`; leg keys are the alert's own (as TradingView sends
them)::

    venue = "mypkg.testing:venue"   # optional: "module:callable", callable(settings) -> async context manager
                                    # that starts a test venue and yields the settings to use (e.g. its URL);
                                    # the settings file's directory is importable
    call_timeout_s = 5.0            # each broker call must return within this

    [settings]                      # the account table, as in [accounts.NAME] minus `broker`
    base_url = "http://127.0.0.1:8900"

    [leg]                           # a leg the venue accepts (defaults: B 1 RELIANCE NSE EQ C)
    symbol = "INFY"

    [prices]
    limit = "100"                   # LMT/SL price that the venue accepts (default 100)
    trigger = "95"                  # SL/SL-M trigger price (default 95)
    resting = "1"                   # a buy limit price that rests open: enables the cancel checks

    [reject]                        # overrides of [leg] that the venue refuses (required)
    symbol = "REJECTME"

    [unknown_outcome]               # overrides of [leg]: the venue records the order but the answer never
    symbol = "SLOWME"               # comes in time (timeout, dropped connection); enables that check

Outcomes the kit accepts where the interface allows a choice: a refusal may be raised (`BrokerRejectedError`) or
returned (`state = rejected`); a lost answer may be raised (`BrokerUnknownOutcomeError`) or resolved by the
plugin itself (a result for the order that exists). Dry-run results (`state = dry_run`) fail the placement
checks: run the kit against a live-mode account on a test venue.
"""

from tvbridge.conformance.spec import KitSpec, load_spec

__all__ = ["KitSpec", "load_spec"]
