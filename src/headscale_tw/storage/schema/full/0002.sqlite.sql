-- headscale-tw schema version 2, SQLite.
-- Column names follow Headscale's schema where they mean the same thing.
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff+00:00' (text order = time order).
-- Tags, endpoints, approved routes and host_info are JSON text.
-- Unique indexes are named uq_<table>_<column>: the store layer reads the column from the name.

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    provider_identifier TEXT NOT NULL DEFAULT '',
    profile_pic_url TEXT NOT NULL DEFAULT '',
    created_at TEXT,
    updated_at TEXT
);
CREATE UNIQUE INDEX uq_users_name ON users (name);
CREATE UNIQUE INDEX uq_users_provider_identifier ON users (provider_identifier) WHERE provider_identifier <> '';

CREATE TABLE pre_auth_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix TEXT NOT NULL,
    key_hash BLOB NOT NULL,
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    reusable BOOLEAN NOT NULL DEFAULT FALSE,
    ephemeral BOOLEAN NOT NULL DEFAULT FALSE,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    tags TEXT NOT NULL DEFAULT '[]',
    expiration TEXT,
    created_at TEXT
);
CREATE UNIQUE INDEX uq_pre_auth_keys_prefix ON pre_auth_keys (prefix);
CREATE INDEX ix_pre_auth_keys_user_id ON pre_auth_keys (user_id);

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix TEXT NOT NULL,
    key_hash BLOB NOT NULL,
    expiration TEXT,
    last_seen TEXT,
    created_at TEXT
);
CREATE UNIQUE INDEX uq_api_keys_prefix ON api_keys (prefix);

CREATE TABLE nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_key TEXT NOT NULL,
    node_key TEXT NOT NULL,
    disco_key TEXT NOT NULL DEFAULT '',
    hostname TEXT NOT NULL DEFAULT '',
    given_name TEXT NOT NULL,
    given_name_auto BOOLEAN NOT NULL DEFAULT TRUE,
    user_id INTEGER REFERENCES users (id) ON DELETE RESTRICT,
    ipv4 TEXT,
    ipv6 TEXT,
    endpoints TEXT NOT NULL DEFAULT '[]',
    host_info TEXT NOT NULL DEFAULT '{}',
    register_method TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    auth_key_id INTEGER REFERENCES pre_auth_keys (id) ON DELETE SET NULL,
    expiry TEXT,
    last_seen TEXT,
    approved_routes TEXT NOT NULL DEFAULT '[]',
    ephemeral BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT,
    updated_at TEXT
);
CREATE UNIQUE INDEX uq_nodes_machine_key ON nodes (machine_key);
CREATE UNIQUE INDEX uq_nodes_node_key ON nodes (node_key);
CREATE UNIQUE INDEX uq_nodes_given_name ON nodes (given_name);
CREATE UNIQUE INDEX uq_nodes_ipv4 ON nodes (ipv4);
CREATE UNIQUE INDEX uq_nodes_ipv6 ON nodes (ipv6);
CREATE INDEX ix_nodes_user_id ON nodes (user_id);
CREATE INDEX ix_nodes_auth_key_id ON nodes (auth_key_id);

CREATE TABLE policies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    data TEXT NOT NULL,
    created_at TEXT,
    updated_at TEXT
);

CREATE TABLE server_state (
    name TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);

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
