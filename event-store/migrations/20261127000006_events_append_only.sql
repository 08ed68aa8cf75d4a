-- The event store is append-only: the service never changes or removes an event, so nobody
-- may (erasure destroys the patient's key instead). Someone able to switch triggers off can
-- still do it; the hash chains then show it (`patient-service audit verify`).
CREATE FUNCTION events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the event store is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW
EXECUTE FUNCTION events_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION events_append_only();
