-- The audit log now records every aggregate type (appointments and notifications were left
-- out). Fed from the event store, it reads the stream again from its start: entries it holds
-- are recognised by id and skipped, the missing ones are appended in stream order. Fed from
-- Kafka, its consumer group reads the topics it newly subscribes to from their start.
DELETE FROM projections.stream_checkpoints WHERE projector = 'audit_log';
