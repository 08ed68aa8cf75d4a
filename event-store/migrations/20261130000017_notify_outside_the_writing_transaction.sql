-- Writers no longer notify in their own transaction: PostgreSQL serialises the commits of
-- transactions that sent a notification, which undid group commit under concurrent writers.
-- The process that commits rings its readers in process and sends one NOTIFY from a
-- connection of its own for the commits rung meanwhile (`event_store::bell`); readers still
-- poll as the fallback.
DROP TRIGGER IF EXISTS events_committed ON events;
DROP FUNCTION IF EXISTS notify_events_committed();
