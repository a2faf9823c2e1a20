"""The deploy-hook outbox's tables, as a migration `service.database` applies (version 7).

`deploy_hook_changes`: one row per change, written in the transaction of the change itself; `delivery` is
NULL while it waits for the debounce window, then names the delivery that carries it. `change_key` is set
for changes that more than one process could notice (a scheduled time passing): UNIQUE, so each is recorded
once. `deploy_hook_deliveries`: one row per delivery and URL, the URL itself never stored (it is a
capability: whoever has it can start builds), only its hash and host; a delivery still being retried when the
next one is made for its URL is `superseded` by it (the new one carries its reasons too), so a URL that was
down gets one POST when it is back, not one per change it missed. `deploy_hook_sender`: the lease of the
one process that sends, the URLs (hash and host) it sends to, and how far scheduled times have been looked at. Times are integer microseconds.
"""

from __future__ import annotations

from service.database import Migration

MIGRATIONS = (
    Migration(
        7,
        "deploy-hook outbox",
        {
            dialect: f"""
                CREATE TABLE deploy_hook_changes (
                    id {serial},
                    change_key TEXT UNIQUE,
                    kind TEXT NOT NULL,
                    reason TEXT NOT NULL,
                    changed_at BIGINT NOT NULL,
                    delivery TEXT
                );
                CREATE INDEX deploy_hook_changes_delivery ON deploy_hook_changes (delivery, id);
                CREATE TABLE deploy_hook_deliveries (
                    delivery TEXT NOT NULL,
                    target TEXT NOT NULL,
                    host TEXT NOT NULL,
                    state TEXT NOT NULL,
                    attempts INTEGER NOT NULL,
                    created_at BIGINT NOT NULL,
                    first_change_at BIGINT NOT NULL,
                    next_attempt_at BIGINT NOT NULL,
                    finished_at BIGINT,
                    last_outcome TEXT,
                    superseded_by TEXT,
                    PRIMARY KEY (delivery, target)
                );
                CREATE INDEX deploy_hook_deliveries_due ON deploy_hook_deliveries (state, next_attempt_at);
                CREATE TABLE deploy_hook_sender (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    lease_holder TEXT,
                    lease_until BIGINT NOT NULL,
                    scheduled_checked_at BIGINT,
                    targets TEXT
                );
                INSERT INTO deploy_hook_sender (id, lease_until) VALUES (1, 0)"""
            for dialect, serial in (("sqlite", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("postgres", "BIGSERIAL PRIMARY KEY"))
        },
    ),
)
