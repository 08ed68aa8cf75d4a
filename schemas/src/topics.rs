//! Topic names. One topic per aggregate type; the trailing `v1` is the contract's major
//! version, bumped only by a change a consumer cannot absorb.

/// Every event of the `Patient` aggregate, keyed by patient id.
pub const PATIENT: &str = "patients.patient.v1";

/// Every event of the `MedicalRecord` aggregate, keyed by patient id.
pub const MEDICAL_RECORD: &str = "patients.medical-record.v1";

/// Every event of the `Appointment` aggregate, keyed by patient id.
pub const APPOINTMENT: &str = "patients.appointment.v1";

/// Every notification to a patient (reminders, wait-list offers), keyed by patient id.
pub const NOTIFICATIONS: &str = "patients.notifications.v1";

/// Every access to patient data, keyed by patient id.
pub const ACCESS: &str = "patients.access.v1";

/// Every topic the service publishes to.
pub const ALL: [&str; 5] = [PATIENT, MEDICAL_RECORD, APPOINTMENT, NOTIFICATIONS, ACCESS];

/// The topic of an aggregate type, if it has one.
pub fn for_aggregate_type(aggregate_type: &str) -> Option<&'static str> {
    match aggregate_type {
        "Patient" => Some(PATIENT),
        "MedicalRecord" => Some(MEDICAL_RECORD),
        "Appointment" => Some(APPOINTMENT),
        "Notification" => Some(NOTIFICATIONS),
        "Access" => Some(ACCESS),
        _ => None,
    }
}

/// The topic an event type is published on. Event types are unique across topics.
pub fn for_event_type(event_type: &str) -> &'static str {
    if crate::medical_record::v1::EVENT_TYPES.contains(&event_type) {
        MEDICAL_RECORD
    } else if crate::appointment::v1::EVENT_TYPES.contains(&event_type) {
        APPOINTMENT
    } else if crate::notification::v1::EVENT_TYPES.contains(&event_type) {
        NOTIFICATIONS
    } else if [
        crate::access::v1::ACCESS_RECORDED,
        crate::access::v1::EMERGENCY_ACCESS_GRANTED,
    ]
    .contains(&event_type)
    {
        ACCESS
    } else {
        PATIENT
    }
}
