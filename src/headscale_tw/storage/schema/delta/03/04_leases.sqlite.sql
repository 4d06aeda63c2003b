-- Schema version 3: named leases, so one instance of several on this database does a job at a time
-- (ACME ordering now; later ephemeral-node GC, route primaries). A lease row is never deleted:
-- its token only grows, so a token names one tenure for good (fencing). Written only through
-- storage/stores/leases.py, one statement per acquire, renew or release.

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
