//! Topic names. One topic per aggregate type; the trailing `v1` is the contract's major
//! version, bumped only by a change a consumer cannot absorb.

/// Every event of the `Patient` aggregate, keyed by patient id.
pub const PATIENT: &str = "patients.patient.v1";

/// Every event of the `MedicalRecord` aggregate, keyed by patient id.
pub const MEDICAL_RECORD: &str = "patients.medical-record.v1";

/// Every event of the `ClinicalEntry` aggregate (observations, procedures, encounters, each a
/// stream of its own), keyed by patient id.
pub const CLINICAL_ENTRY: &str = "patients.clinical-entry.v1";

/// Every event of the `Appointment` aggregate, keyed by patient id.
pub const APPOINTMENT: &str = "patients.appointment.v1";

/// Every notification to a patient (reminders, wait-list offers), keyed by patient id.
pub const NOTIFICATIONS: &str = "patients.notifications.v1";

/// Every access to patient data, keyed by patient id.
pub const ACCESS: &str = "patients.access.v1";

/// The audit log's chain head ([`crate::audit_head`]), one partition, keyed by chain id. Not an
/// event topic: not in [`ALL`].
pub const AUDIT_HEAD: &str = "patients.audit-head.v1";

/// Every event topic the service publishes to.
pub const ALL: [&str; 6] = [
    PATIENT,
    MEDICAL_RECORD,
    CLINICAL_ENTRY,
    APPOINTMENT,
    NOTIFICATIONS,
    ACCESS,
];

/// The topic of an aggregate type, if it has one.
pub fn for_aggregate_type(aggregate_type: &str) -> Option<&'static str> {
    match aggregate_type {
        "Patient" => Some(PATIENT),
        "MedicalRecord" => Some(MEDICAL_RECORD),
        "ClinicalEntry" => Some(CLINICAL_ENTRY),
        "Appointment" => Some(APPOINTMENT),
        "Notification" => Some(NOTIFICATIONS),
        "Access" => Some(ACCESS),
        _ => None,
    }
}

/// The aggregate type whose events a topic carries: the inverse of [`for_aggregate_type`].
pub fn aggregate_type(topic: &str) -> Option<&'static str> {
    match topic {
        PATIENT => Some("Patient"),
        MEDICAL_RECORD => Some("MedicalRecord"),
        CLINICAL_ENTRY => Some("ClinicalEntry"),
        APPOINTMENT => Some("Appointment"),
        NOTIFICATIONS => Some("Notification"),
        ACCESS => Some("Access"),
        _ => None,
    }
}

/// The aggregate type of an event type: the first part of the event's identity (its `ce_id`,
/// [`crate::envelope::event_id`]), which a consumer recomputes rather than trusts.
pub fn aggregate_type_of_event_type(event_type: &str) -> &'static str {
    match for_event_type(event_type) {
        MEDICAL_RECORD => "MedicalRecord",
        CLINICAL_ENTRY => "ClinicalEntry",
        APPOINTMENT => "Appointment",
        NOTIFICATIONS => "Notification",
        ACCESS => "Access",
        _ => "Patient",
    }
}

/// The topic an event type is published on. Event types are unique across topics.
pub fn for_event_type(event_type: &str) -> &'static str {
    if crate::medical_record::v1::EVENT_TYPES.contains(&event_type) {
        MEDICAL_RECORD
    } else if crate::clinical_entry::v1::EVENT_TYPES.contains(&event_type) {
        CLINICAL_ENTRY
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_names_the_aggregate_type_that_names_it() {
        for topic in ALL {
            let aggregate_type = aggregate_type(topic).unwrap();
            assert_eq!(for_aggregate_type(aggregate_type), Some(topic));
        }
        assert_eq!(aggregate_type("patients.other.v1"), None);
    }

    #[test]
    fn an_event_type_has_the_aggregate_type_of_its_topic() {
        for (event_type, aggregate) in [
            ("PatientRegistered", "Patient"),
            ("PatientForgotten", "Patient"),
            ("AllergyRecorded", "MedicalRecord"),
            ("ObservationRecorded", "ClinicalEntry"),
            ("EncounterEnteredInError", "ClinicalEntry"),
            ("AppointmentCreated", "Appointment"),
            ("AppointmentReminder", "Notification"),
            (crate::access::v1::ACCESS_RECORDED, "Access"),
            (crate::access::v1::EMERGENCY_ACCESS_GRANTED, "Access"),
        ] {
            assert_eq!(
                aggregate_type_of_event_type(event_type),
                aggregate,
                "{event_type}"
            );
            assert_eq!(
                aggregate_type(for_event_type(event_type)),
                Some(aggregate),
                "{event_type}"
            );
        }
    }
}
