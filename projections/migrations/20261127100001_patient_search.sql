-- Read models live in the `projections` schema; this migration set keeps its own
-- _sqlx_migrations table there (see projections::migrate).

-- The last sequence each projector applied per aggregate: a repeated event is a no-op.
CREATE TABLE projections.applied_sequences
(
    projector     text   NOT NULL,
    aggregate_id  text   NOT NULL,
    last_sequence bigint NOT NULL,
    PRIMARY KEY (projector, aggregate_id)
);

-- Where a projector fed from the event-store stream (not Kafka) stands in that stream.
CREATE TABLE projections.stream_checkpoints
(
    projector      text PRIMARY KEY,
    transaction_id bigint      NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Records a projector could not use (malformed headers or data), kept rather than dropped so
-- an operator can look at them. No payload is kept: it may be patient data.
CREATE TABLE projections.parked_messages
(
    projector  text        NOT NULL,
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    "offset"   bigint      NOT NULL,
    error      text        NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition, "offset")
);

-- Current demographics and status of every patient, for search.
-- *_search columns hold the accent- and case-folded forms the search matches against.
CREATE TABLE projections.patient_search
(
    patient_id    uuid PRIMARY KEY,
    mrn           text        NOT NULL,
    given         text[]      NOT NULL,
    family        text        NOT NULL,
    given_search  text[]      NOT NULL,
    family_search text        NOT NULL,
    birth_date    date        NOT NULL,
    gender        text        NOT NULL,
    status        text        NOT NULL,
    version       bigint      NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE INDEX patient_search_family ON projections.patient_search (family_search text_pattern_ops);
CREATE INDEX patient_search_given ON projections.patient_search USING gin (given_search);
CREATE INDEX patient_search_birth_date ON projections.patient_search (birth_date);
CREATE INDEX patient_search_mrn ON projections.patient_search (mrn);
