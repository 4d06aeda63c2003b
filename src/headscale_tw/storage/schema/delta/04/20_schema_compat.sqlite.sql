-- Schema version 4: the lowest code schema version that can still serve this database, for rolling
-- upgrades (expand, then contract; see docs/storage.md). An additive delta leaves the row alone; a
-- delta that drops or changes what older code reads raises it in the same file:
--   UPDATE schema_compat SET minimum_code_version = N WHERE minimum_code_version < N;
-- No release before schema version 4 reads this row (they refuse any newer database), so 4 it is.

CREATE TABLE schema_compat (
    lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE CHECK (lock = 'X'),
    minimum_code_version INTEGER NOT NULL
);

INSERT INTO schema_compat (lock, minimum_code_version) VALUES ('X', 4);
