"""The PostgreSQL store's schema, versioned: `tvbridge db migrate`, and every start, bring a database up to date.

Each entry of `MIGRATIONS` is applied once, in order, each with the `schema_version` row that records it, all
missing ones in ONE transaction under a transaction-level advisory lock: a failure leaves the database at the
version it had (nothing half-applied), and two instances starting at the same moment migrate once (the second
waits, then finds nothing left to do). A database newer than this release (a later version rolled
back) is refused rather than written in a shape this code does not know.

Columns keep the SQLite journal's types and text forms (times as ISO-8601 UTC text, JSON as text), so both
stores answer `get_alert` and the dedupe look-ups with the same values; see `tvbridge/journal.py` for what each
column means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tvbridge.errors import JournalError

if TYPE_CHECKING:
    import asyncpg

MIGRATION_LOCK: Final = 0x7476_6272_6467_0001
"""The advisory lock key migrations hold (any constant unlikely to clash with an application's own)."""

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the journal, the dedupe claims, the closed-market queue
    """
    CREATE TABLE alerts (
        alert_id         TEXT PRIMARY KEY,
        received_at      TEXT NOT NULL,
        alert_type       TEXT NOT NULL,
        dedupe_key       TEXT,
        source           TEXT,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL,
        response         TEXT,
        updated_at       TEXT NOT NULL,
        order_log_offset BIGINT
    );
    CREATE INDEX alerts_status ON alerts (status);
    CREATE INDEX alerts_dedupe ON alerts (dedupe_key, received_at);
    CREATE TABLE probe (
        instance TEXT PRIMARY KEY,
        at       TEXT NOT NULL,
        filler   BYTEA NOT NULL
    );
    CREATE TABLE legs (
        alert_id         TEXT NOT NULL REFERENCES alerts (alert_id),
        account          TEXT NOT NULL,
        leg_number       INTEGER NOT NULL,
        client_order_id  TEXT,
        state            TEXT NOT NULL,
        order_id         TEXT,
        message          TEXT,
        result           TEXT,
        updated_at       TEXT NOT NULL,
        order_state      TEXT,
        filled_quantity  BIGINT,
        average_price    TEXT,
        order_message    TEXT,
        order_updated_at TEXT,
        bracket          TEXT,
        PRIMARY KEY (alert_id, account, leg_number)
    );
    CREATE INDEX legs_followed ON legs (order_state)
        WHERE order_state IN ('pending', 'open', 'trigger_pending', 'partially_filled');
    CREATE INDEX legs_account ON legs (account, updated_at);
    CREATE TABLE dedupe_claims (
        dedupe_key  TEXT PRIMARY KEY,
        alert_id    TEXT NOT NULL,
        claimed_at  TEXT NOT NULL
    );
    CREATE TABLE queue (
        id          BIGSERIAL PRIMARY KEY,
        alert_id    TEXT NOT NULL,
        account     TEXT NOT NULL,
        not_before  TEXT NOT NULL,
        reason      TEXT NOT NULL,
        state       TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        UNIQUE (alert_id, account)
    );
    CREATE INDEX queue_due ON queue (state, not_before);
    """,
    # 2: instances hold leases; an unfinished alert belongs to the instance running it (issue 20)
    """
    CREATE TABLE instances (
        instance_id  TEXT PRIMARY KEY,
        started_at   TEXT NOT NULL,
        lease_until  TEXT NOT NULL
    );
    ALTER TABLE alerts ADD COLUMN owner TEXT;
    CREATE INDEX alerts_unfinished_owner ON alerts (owner) WHERE status = 'accepted';
    """,
    # 3: the kill switch, shared: a halt on one instance halts them all (tvbridge/halt_sync.py)
    """
    CREATE TABLE halt (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        version  BIGINT NOT NULL,
        halted   BOOLEAN NOT NULL,
        reason   TEXT NOT NULL,
        since    TEXT NOT NULL,
        by_whom  TEXT NOT NULL
    );
    INSERT INTO halt (id, version, halted, reason, since, by_whom) VALUES (1, 0, false, '', '', '');
    """,
    # 4: the refusals journal and the status page's actions (tvbridge/refusal_journal.py, status_actions.py)
    """
    CREATE TABLE refusals (
        id           BIGSERIAL PRIMARY KEY,
        alert_id     TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        http_status  INTEGER NOT NULL,
        reason       TEXT NOT NULL,
        message      TEXT NOT NULL,
        errors       TEXT,
        alert_type   TEXT,
        source       TEXT,
        payload      TEXT
    );
    CREATE INDEX refusals_alert ON refusals (alert_id);
    CREATE INDEX refusals_received ON refusals (received_at);
    CREATE TABLE admin_actions (
        id      BIGSERIAL PRIMARY KEY,
        at      TEXT NOT NULL,
        action  TEXT NOT NULL,
        detail  TEXT NOT NULL,
        source  TEXT,
        by      TEXT NOT NULL
    );
    """,
    # 5: strategies (issue 19): the strategy an alert runs under; the filled legs its own positions are summed from
    """
    ALTER TABLE alerts ADD COLUMN strategy TEXT;
    CREATE INDEX legs_filled ON legs (account) WHERE filled_quantity > 0;
    """,
    # 6: the instance sending a claimed queue row: a new leader never re-sends what a living one is sending
    """
    ALTER TABLE queue ADD COLUMN claimed_by TEXT;
    """,
    # 7: what a broker plugin's leader shares with the other instances (tvbridge/cluster.py): Dhan's renewed
    # token (encrypted with `journal.shared_secret_key`, which the database never holds), the master's version
    """
    CREATE TABLE broker_shared (
        account       TEXT NOT NULL,
        name          TEXT NOT NULL,
        version       BIGINT NOT NULL,
        value         TEXT NOT NULL,
        secret        BOOLEAN NOT NULL,
        published_by  TEXT NOT NULL,
        published_at  TEXT NOT NULL,
        PRIMARY KEY (account, name)
    );
    """,
    # 8: the paper book, shared: every paper account's orders, positions and brackets (brokers/.../paper/tables.py)
    """
    CREATE TABLE paper_orders (
        account          TEXT NOT NULL,
        id               BIGINT NOT NULL,        -- numbered per account, as in the account's SQLite file
        client_order_id  TEXT NOT NULL,
        alert_id         TEXT NOT NULL,
        leg_number       INTEGER NOT NULL,
        exchange         TEXT NOT NULL,
        symbol           TEXT NOT NULL,
        contract         TEXT NOT NULL,
        instrument       TEXT NOT NULL,
        option_type      TEXT,
        strike_price     TEXT,
        expiry_date      TEXT,
        product          TEXT NOT NULL,
        side             TEXT NOT NULL,
        order_type       TEXT NOT NULL,
        quantity         INTEGER NOT NULL CHECK (quantity > 0),
        price            TEXT NOT NULL,
        trigger_price    TEXT,
        state            TEXT NOT NULL,
        filled_quantity  INTEGER NOT NULL,
        average_price    TEXT,
        message          TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        PRIMARY KEY (account, id),
        UNIQUE (account, client_order_id)       -- one order per client order id, whichever instance places it
    );
    CREATE INDEX paper_orders_by_contract ON paper_orders (account, exchange, contract, state);
    CREATE INDEX paper_orders_by_symbol ON paper_orders (account, symbol, state);
    CREATE TABLE paper_noops (
        account          TEXT NOT NULL,
        client_order_id  TEXT NOT NULL,
        alert_id         TEXT NOT NULL,
        leg_number       INTEGER NOT NULL,
        message          TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        PRIMARY KEY (account, client_order_id)
    );
    CREATE TABLE paper_positions (
        account          TEXT NOT NULL,
        exchange         TEXT NOT NULL,
        contract         TEXT NOT NULL,
        product          TEXT NOT NULL,
        symbol           TEXT NOT NULL,
        instrument       TEXT NOT NULL,
        option_type      TEXT,
        strike_price     TEXT,
        expiry_date      TEXT,
        net_quantity     INTEGER NOT NULL,
        average_price    TEXT,
        realized_pnl     TEXT,
        updated_at       TEXT NOT NULL,
        PRIMARY KEY (account, exchange, contract, product)
    );
    CREATE TABLE paper_brackets (
        account          TEXT NOT NULL,
        entry_id         BIGINT NOT NULL,
        target_id        BIGINT,
        stop_id          BIGINT,
        trailing_jump    TEXT,
        anchor           TEXT,
        PRIMARY KEY (account, entry_id),
        FOREIGN KEY (account, entry_id) REFERENCES paper_orders (account, id)
    );
    """,
    # 9: each strategy's kill switch, shared like the global one: one row per switch, keyed by `strategy` ('' for
    # all trading). The global row keeps `id = 1` (the others 0), so an instance still on the previous release
    # during a rolling upgrade reads and writes the global switch as before.
    """
    ALTER TABLE halt ADD COLUMN strategy TEXT NOT NULL DEFAULT '';
    ALTER TABLE halt DROP CONSTRAINT halt_pkey, DROP CONSTRAINT halt_id_check;
    ALTER TABLE halt ADD PRIMARY KEY (strategy), ADD CHECK ((id = 1) = (strategy = ''));
    ALTER TABLE halt ALTER COLUMN id SET DEFAULT 0;
    """,
)
LATEST: Final = len(MIGRATIONS)


async def migrate(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> tuple[int, int]:
    """Apply what is missing; returns (version before, version after). `JournalError` for a newer database."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        before = int(found or 0)
        if before > LATEST:
            raise JournalError(
                f"the database's schema is version {before}, newer than this tvbridge knows ({LATEST}): upgrade"
                " tvbridge, or restore the database it last ran with"
            )
        for version in range(before + 1, LATEST + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return before, LATEST
