-- Each appointment as it stands, for searching by patient, practitioner, time and status (FHIR
-- Appointment search). Only ids, codes and times: the appointment itself is read from the
-- store. Disposable like every read model: rebuilt from the appointment topic.
CREATE TABLE projections.appointments
(
    appointment_id uuid        PRIMARY KEY,
    patient_id     uuid        NOT NULL,
    status         text        NOT NULL,
    service        text        NOT NULL,
    -- The first resource of the booking (its practitioner), and all of them.
    practitioner   text,
    resources      text[]      NOT NULL DEFAULT '{}',
    starts_at      timestamptz,
    ends_at        timestamptz,
    version        bigint      NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX appointments_patient ON projections.appointments (patient_id, starts_at);
CREATE INDEX appointments_practitioner ON projections.appointments (practitioner, starts_at);
