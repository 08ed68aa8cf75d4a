-- The wait list, written in the transaction of each entry's appointment events: what the
-- patient waits for, how urgent, since when, and where their offer stands.
CREATE TABLE scheduling_waitlist (
    appointment_id   uuid PRIMARY KEY,
    patient_id       uuid NOT NULL,
    service          text NOT NULL,
    practitioner     text,
    wish             tstzrange NOT NULL,
    -- 0 emergency, 1 urgent, 2 routine: lower goes first, then the longest waiting.
    priority_rank    smallint NOT NULL,
    joined_at        timestamptz NOT NULL,
    status           text NOT NULL CHECK (status IN ('waiting', 'offered', 'booked', 'left')),
    offer_start      timestamptz,
    offer_expires_at timestamptz,
    -- The start of the last offer this entry let expire: not offered to it again.
    declined_start   timestamptz
);
CREATE INDEX scheduling_waitlist_queue ON scheduling_waitlist (status, priority_rank, joined_at);
