-- Why each record was parked (`undecodable`, `unopenable`, `unverified`), so parked records can
-- be counted per projector and reason (projections::runtime::parked_counts). The default covers
-- a projector of the previous release still parking during a rolling upgrade; rows parked before
-- this column existed are classified from their message. No payload is kept, as before.
ALTER TABLE projections.parked_messages
    ADD COLUMN reason text NOT NULL DEFAULT 'unclassified';

UPDATE projections.parked_messages
   SET reason = CASE
                    WHEN error LIKE 'sealed data of the event does not open%' THEN 'unopenable'
                    ELSE 'undecodable'
                END;
