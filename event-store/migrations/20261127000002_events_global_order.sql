-- Columns postgres-es does not know about and never writes: they fill by default.
--
-- position:       a global order of insertion. Identity values are taken at INSERT but become
--                 visible at COMMIT, so under concurrency they commit out of order.
-- transaction_id: the writing transaction. Every transaction whose id is below
--                 pg_snapshot_xmin(pg_current_snapshot()) has ended, so reading only those rows,
--                 ordered by (transaction_id, position), never skips a row that commits later.
-- recorded_at:    when the writing transaction started, for ce_time and audits.
ALTER TABLE events
    ADD COLUMN position       bigint      GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN recorded_at    timestamptz NOT NULL DEFAULT now();

-- Not unique on purpose: postgres-es reads every unique violation as an optimistic-lock
-- conflict, so nothing but its primary key may ever raise one.
CREATE INDEX events_commit_order ON events (transaction_id, position);

-- Wakes the relay and the embedded projectors at commit instead of waiting for their poll.
CREATE FUNCTION notify_events_committed() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('events_committed', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_committed
    AFTER INSERT ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION notify_events_committed();
