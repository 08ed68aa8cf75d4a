//! Wire types of the topic [`crate::topics::NOTIFICATIONS`]: what should reach a patient
//! (appointment reminders, wait-list offers), for a notification service to deliver on the
//! patient's channel. One module per major version.

pub mod v1;
