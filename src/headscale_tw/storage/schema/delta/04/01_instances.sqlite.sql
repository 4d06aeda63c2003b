-- Schema version 4: the instances serving this database, each renewing its own row (a heartbeat).
-- A row whose expires_at has passed belongs to an instance that stopped or died: other instances
-- stop counting it as live (DERP mesh membership, whose streams count as online, who may act).
-- Written only through storage/stores/instances.py.

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    software_version TEXT NOT NULL DEFAULT '',
    schema_version INTEGER NOT NULL DEFAULT 0,
    server_url TEXT NOT NULL DEFAULT '',
    derp_url TEXT NOT NULL DEFAULT ''
);

CREATE INDEX ix_instances_expires_at ON instances (expires_at);
