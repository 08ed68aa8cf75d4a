-- Process managers follow the ordered event stream, each with its own checkpoint, and react by
-- issuing commands. A command the domain refuses is recorded here with its reason (ids and
-- codes only), counted and passed by, never retried for ever nor dropped silently.
CREATE TABLE process_manager_checkpoints (
    name           text        PRIMARY KEY,
    transaction_id xid8        NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE process_manager_refusals (
    name           text        NOT NULL,
    position       bigint      NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    reason         text        NOT NULL,
    refused_at     timestamptz NOT NULL,
    PRIMARY KEY (name, position)
);

-- Reacting to archives moves from the request to a process manager with this migration: it
-- starts where the requests stopped doing it, the newest event now stored (archives before
-- it were wound down by the request that made them), fixed here, at the upgrade, not at
-- whenever a background process first runs.
INSERT INTO process_manager_checkpoints (name, transaction_id, position)
SELECT 'archived-patient-appointments',
       coalesce((SELECT transaction_id FROM events ORDER BY transaction_id DESC, position DESC LIMIT 1), '0'::xid8),
       coalesce((SELECT position FROM events ORDER BY transaction_id DESC, position DESC LIMIT 1), 0);
