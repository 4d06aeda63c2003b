-- Schema version 2: pending auth requests (interactive registrations now, SSH check mode later).
-- One row per request a person or an admin has to finish. Only what finishing needs is kept:
-- the keys, the requested hostname and a few small fields (details, JSON text, at most 8 KiB),
-- never the client's whole Hostinfo. Rows past expires_at are expired and removed by a periodic job.

CREATE TABLE auth_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    auth_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('register', 'ssh_check')),
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
    source TEXT NOT NULL DEFAULT '',
    machine_key TEXT NOT NULL DEFAULT '',
    node_key TEXT NOT NULL DEFAULT '',
    hostname TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}',
    user_id INTEGER REFERENCES users (id) ON DELETE SET NULL,
    node_id INTEGER REFERENCES nodes (id) ON DELETE SET NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE UNIQUE INDEX uq_auth_requests_auth_id ON auth_requests (auth_id);
CREATE INDEX ix_auth_requests_state_source ON auth_requests (state, source);
CREATE INDEX ix_auth_requests_machine_key ON auth_requests (machine_key);
CREATE INDEX ix_auth_requests_expires_at ON auth_requests (expires_at);
