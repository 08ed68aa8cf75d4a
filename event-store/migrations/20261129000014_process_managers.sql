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
