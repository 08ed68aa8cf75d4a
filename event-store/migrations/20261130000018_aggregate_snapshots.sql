-- Sealed snapshots of long-lived aggregates (a patient's medical record): the aggregate's state
-- after event `sequence`, sealed with the patient's data key and bound to that event's hash
-- (`anchor_hash`), so a load reads the snapshot and only the events after it. Erasing the
-- patient destroys the key (and deletes the row): a snapshot never outlives its events.
CREATE TABLE aggregate_snapshots
(
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    version        integer     NOT NULL,
    anchor_hash    bytea       NOT NULL,
    sealed         jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE INDEX aggregate_snapshots_id ON aggregate_snapshots (aggregate_id);
