-- Scheduling. Resources (practitioners, rooms, equipment) and service types are reference
-- data, not patient data: plain tables, versioned. Appointments are event-sourced (sealed
-- with the patient's key); the time they claim is kept here, where an exclusion constraint
-- makes double booking impossible whatever number of API processes book at once.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE scheduling_resources (
    id           text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    kind         text NOT NULL CHECK (kind IN ('practitioner', 'room', 'equipment')),
    name         text NOT NULL,
    specialty    text,
    room_type    text,
    capabilities text[] NOT NULL DEFAULT '{}',
    -- The weekly template (domain::scheduling::WeeklyTemplate as JSON), if it has one.
    template     jsonb,
    version      integer NOT NULL DEFAULT 1,
    updated_by   text NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- Holidays, leave and one-off blocks of a resource.
CREATE TABLE scheduling_blocks (
    block_id    uuid PRIMARY KEY,
    resource_id text NOT NULL REFERENCES scheduling_resources (id),
    during      tstzrange NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('holiday', 'leave', 'one-off')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX scheduling_blocks_resource ON scheduling_blocks USING gist (resource_id, during);

-- What a service needs: how long, a practitioner of which specialty, a room of which type,
-- equipment with which capabilities.
CREATE TABLE scheduling_services (
    code         text PRIMARY KEY CHECK (code ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    name         text NOT NULL,
    minutes      integer NOT NULL CHECK (minutes BETWEEN 5 AND 480),
    specialty    text,
    room_type    text,
    capabilities text[] NOT NULL DEFAULT '{}',
    version      integer NOT NULL DEFAULT 1,
    updated_by   text NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- The time each appointment claims, one row per resource (and one for the patient:
-- 'patient:<id>'). Holds and offers expire; an expired claim is removed by the next claim
-- that overlaps it, in the same transaction.
CREATE TABLE schedule_claims (
    appointment_id uuid NOT NULL,
    resource       text NOT NULL,
    during         tstzrange NOT NULL,
    expires_at     timestamptz,
    EXCLUDE USING gist (resource WITH =, during WITH &&)
);
CREATE INDEX schedule_claims_appointment ON schedule_claims (appointment_id);
