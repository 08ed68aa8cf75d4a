//! End-to-end tests of the patient service live in `tests/api/`; run them with `scripts/test`,
//! which starts the PostgreSQL cluster and the Kafka-protocol broker they need.
