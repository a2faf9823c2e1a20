"""The GitHub shared tier's tables, as a migration `service.database` applies (version 3).

Cached GitHub answers every process adopts (value and validators as msgspec JSON; validators only for the
token hashed in validators_scope), the refresh lease, and the time a webhook said the data changed; the
deployment's rate-limit block, unknown-name budget and change counter; webhook deliveries already acted
on. Times are integer microseconds since the epoch.
"""

from __future__ import annotations

from service.database import Migration

MIGRATIONS = (
    Migration(
        3,
        "GitHub shared tier",
        {
            dialect: f"""
                CREATE TABLE github_cache (
                    key TEXT PRIMARY KEY,
                    value {blob},
                    validators {blob},
                    validators_scope TEXT,
                    digest TEXT,
                    validated_at BIGINT,
                    changed_at BIGINT,
                    lease_holder TEXT,
                    lease_until BIGINT
                );
                CREATE TABLE github_shared (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    changes BIGINT NOT NULL,
                    rate_limited_until BIGINT NOT NULL,
                    lookup_tokens DOUBLE PRECISION NOT NULL,
                    lookups_at BIGINT NOT NULL
                );
                INSERT INTO github_shared (id, changes, rate_limited_until, lookup_tokens, lookups_at) VALUES (1, 0, 0, 0, 0);
                CREATE TABLE github_deliveries (id TEXT PRIMARY KEY, received_at BIGINT NOT NULL)"""
            for dialect, blob in (("sqlite", "BLOB"), ("postgres", "BYTEA"))
        },
    ),
)
