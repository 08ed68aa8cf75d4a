//! Wire types of the topic [`crate::topics::APPOINTMENT`]: every change to an appointment or
//! wait-list entry. One module per major version.

pub mod v1;
