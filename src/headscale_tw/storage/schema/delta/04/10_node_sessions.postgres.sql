-- Schema version 4: which instance holds a map stream of which node (issue #16, shared online state).
-- An instance inserts its row when a node's first stream opens there and deletes it when the node's
-- offline grace ends there. A node is online while it has a row on a live instance (see the
-- instances table); rows of a dead instance are deleted by whichever instance notices first.
-- connected_at is when the node came online (carried over from the node's other rows while it
-- moves between instances): HA route election ranks routers by it, the same way everywhere.
-- Written only through storage/stores/node_sessions.py.

CREATE TABLE node_sessions (
    node_id BIGINT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    instance_id TEXT NOT NULL,
    connected_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (node_id, instance_id)
);

CREATE INDEX ix_node_sessions_instance_id ON node_sessions (instance_id);
