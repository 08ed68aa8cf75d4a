//! Wire type of the topic [`crate::topics::AUDIT_HEAD`]: the head of the audit log's hash chain,
//! published by the relay every `kafka.audit_head_interval_secs` while it moves. Kept outside the
//! database, these records let `audit verify` catch a chain rolled back, or cut short together
//! with the newest events: whoever can write to the database can remove the newest entries
//! and restore an earlier head, but cannot take back what the topic already holds.
//!
//! A record is published in the clear (ids, counts and hashes only), keyed by `chain_id`, with
//! no CloudEvents headers but `content-type`. One major version per module.

pub mod v1 {
    use chrono::{DateTime, Utc};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// The audit log's chain head at one moment.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct AuditChainHead {
        /// The chain's id: a new one each time the audit log is built afresh (`rebuild`, a
        /// restore), whose entries are then numbered from 1 again.
        pub chain_id: Uuid,
        /// The number of the chain's last entry (0 for an empty chain).
        pub seq: u64,
        /// Hex of the last entry's hash (HMAC-SHA256 with the audit key); empty for an empty
        /// chain.
        #[schemars(regex(pattern = "^([0-9a-f]{64})?$"))]
        pub hash: String,
        /// When the head was read.
        pub read_at: DateTime<Utc>,
        /// Hex of an HMAC-SHA256 with the audit key over `chain_id`, `seq` and `hash`: a record
        /// written by anyone without the key is told apart and ignored.
        #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
        pub mac: String,
    }

    /// The JSON Schema of the record, with its path under `json/`.
    pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
        vec![(
            "audit-head/v1/AuditChainHead.schema.json",
            schemars::schema_for!(AuditChainHead),
        )]
    }
}
