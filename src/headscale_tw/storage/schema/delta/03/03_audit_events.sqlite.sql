-- Schema version 3: the audit log (issue #12 item 4).
-- One row per admin action or successful authentication event, and one row per source and
-- interval for failed attempts (the brute-force throttle's summary), never one per failure.
-- No secret is ever stored: actors are named by key prefix, socket user or OIDC user; detail is
-- small JSON. Each instance sharing the database writes its own rows (instance names the writer).
-- Rows older than audit.retention are deleted by a periodic job.

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL DEFAULT '',
    target_id TEXT NOT NULL DEFAULT '',
    target_name TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{}',
    instance TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ix_audit_events_at ON audit_events (at);
CREATE INDEX ix_audit_events_action ON audit_events (action);
