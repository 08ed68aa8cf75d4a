-- Each restore of a backup starts an epoch of the store. Events written after a restore take
-- again aggregate sequences whose events may have been published before it, with other
-- content; the epoch enters their published identity (ce_id, ce_epoch), so one identity never
-- stands for two contents. An event's epoch is that of the last row whose from_position is at
-- or below its position; events before the first restore are of epoch 0, which has no row.
-- Written only by `patient-service restore`.
CREATE TABLE store_epochs
(
    epoch         integer PRIMARY KEY CHECK (epoch > 0),
    from_position bigint      NOT NULL UNIQUE,
    restored_at   timestamptz NOT NULL DEFAULT now()
);
