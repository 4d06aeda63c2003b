-- Schema version 3: the built-in ACME client's state, shared by every instance on this database.
-- acme_accounts: one account key per ACME directory URL (PKCS#8 PEM; a secret, like the pepper).
-- acme_certificates: the certificate chain and key for a hostname; serial grows on every store so
--   instances notice a new one with a cheap poll; lease_token is the tenure that stored it.
-- acme_challenges: HTTP-01 key authorizations (kind 'http-01', name = token, value) and
--   TLS-ALPN-01 validation certificates (kind 'tls-alpn-01', name = domain, value = certificate,
--   key_pem) while an order is validated, so any instance can answer them.

CREATE TABLE acme_accounts (
    directory_url TEXT PRIMARY KEY,
    key_pem TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE acme_certificates (
    hostname TEXT PRIMARY KEY,
    chain_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    serial INTEGER NOT NULL,
    lease_token INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE acme_challenges (
    kind TEXT NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01')),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    key_pem TEXT NOT NULL DEFAULT '',
    expires_at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
