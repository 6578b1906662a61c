"""The alert path, in the order an alert meets it (issue 22: plan, then one commit, then execute).

    middlewares/      the guards, one pass (`middlewares/__init__.py` has the order) -> `handlers.webhook`
    parsing.py        the body's JSON -> a typed `Alert` (cattrs)
    alerts/plan.py    PURE: per account and leg, send now / queue until / amo / refuse (stale, closed, risk,
                      unsupported), with the reason, the client order id and the quantity
    alerts/records.py the journal's write interface: the alert + its plan + the first legs' `sending` marks in
                      ONE transaction (`record_plan`), then the results, grouped and not waited for
                      (`record_results`); `journal.py` is the SQLite store behind it
    executor.py       the legs that send now, one account at a time per leg, each `sending` mark committed
                      before its broker call
    alerts/answer.py  every webhook answer, built in one place from a plan and its results
    deadline.py       answer within `server.response_deadline_s`, else 202 while the legs keep running

`alerts/flow.py` is the webhook's body: it calls these in that order and nothing else.
"""
