-- Schema version 3 (part 02): OpenID Connect sign-ins in progress, so that any instance on the
-- same database can take the provider's callback or the person's confirmation.
-- kind 'login': started at /register/<auth_id>, waiting for /oidc/callback; keeps the nonce and
--   the PKCE verifier. kind 'ssh_check': the same for a sign-in started at /auth/<auth_id>. kind 'confirmation': the person signed in, waiting for their confirmation;
--   keeps who they are (identity, JSON text of at most a few KiB).
-- key_hash is the SHA-256 (hex) of the state or confirmation token, never the value itself.
-- A row is taken once (deleted when read), trimmed to a cap per kind, and removed past expires_at.

CREATE TABLE oidc_logins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('login', 'confirmation', 'ssh_check')),
    key_hash TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    nonce TEXT NOT NULL DEFAULT '',
    code_verifier TEXT,
    pkce_method TEXT NOT NULL DEFAULT '',
    identity TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE UNIQUE INDEX uq_oidc_logins_kind_key ON oidc_logins (kind, key_hash);
CREATE INDEX ix_oidc_logins_kind_id ON oidc_logins (kind, id);
CREATE INDEX ix_oidc_logins_expires_at ON oidc_logins (expires_at);
