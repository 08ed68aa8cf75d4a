-- Notifications decided in a transaction (a wait-list offer) wait here, written with that
-- transaction, until the background loop sends each once (as a Notification event with this
-- id) and removes the row. A crash in between sends nothing twice: the event id is taken.
CREATE TABLE scheduling_outbox (
    notification_id uuid PRIMARY KEY,
    patient_id      uuid NOT NULL,
    event           jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
