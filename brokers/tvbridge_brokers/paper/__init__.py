"""The `paper` broker: practice trading with simulated fills and positions, kept in SQLite across restarts.

It is tvbridge's default account and the test double for the whole service, so it keeps every rule a real
plugin keeps (idempotent `place()`, typed errors, `lookup()` by client order id). Layout: `settings.py` checks
the account's config table, `book.py` holds the order book rules and the SQLite storage (synchronous),
`broker.py` is the async plugin that runs the book on its own thread, `models.py` the records it reports,
`master.py` Dhan's instrument master and rules for an account with `instruments_path` (paper predicts Dhan).
"""

from .broker import PaperBroker
from .models import PaperOrder, PaperPosition
from .settings import PaperSettings

__all__ = ["PaperBroker", "PaperOrder", "PaperPosition", "PaperSettings"]
