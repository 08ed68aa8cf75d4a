//! Wire types of the topic [`crate::topics::CLINICAL_ENTRY`]: every change to a patient's
//! observations, procedures and encounters, each kept in a stream of its own. One module per
//! major version.

pub mod v1;
