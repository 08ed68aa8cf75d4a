-- Reminders planned for booked appointments, written in the transaction of the appointment's
-- events: re-planned when it moves, dropped when it is cancelled. A dispatcher sends each
-- when due, as a Notification event whose id is the reminder's id, so it goes out once even
-- if the dispatcher dies between sending and marking it sent.
CREATE TABLE scheduling_reminders (
    reminder_id    uuid PRIMARY KEY,
    appointment_id uuid NOT NULL,
    patient_id     uuid NOT NULL,
    starts_at      timestamptz NOT NULL,
    offset_minutes integer NOT NULL,
    due_at         timestamptz NOT NULL,
    -- Quiet hours are read in this zone (the practitioner's).
    time_zone      text NOT NULL,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'skipped'))
);
CREATE INDEX scheduling_reminders_due ON scheduling_reminders (due_at) WHERE status = 'pending';
CREATE INDEX scheduling_reminders_appointment ON scheduling_reminders (appointment_id);
