//! Wire types of the topic [`crate::topics::MEDICAL_RECORD`]: every change to a patient's
//! allergies, medications, immunizations, problems, health history and documents. One module
//! per major version.

pub mod v1;
