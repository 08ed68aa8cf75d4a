//! Wire types of the topic [`crate::topics::ACCESS`]: who read which patient's data, when, why,
//! and whether they were let in. One module per major version.

pub mod v1;
