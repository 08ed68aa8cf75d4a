//! Stored events are the domain's types; published events are the contract's. This module is
//! the one place that maps one to the other, so the domain can change without breaking
//! consumers and the contract can grow without touching the store.

use cqrs_es::Aggregate;
use cqrs_es::DomainEvent;
use domain::medical_record::{MedicalRecord, MedicalRecordEvent};
use domain::patient::{self, Patient};
use schemas::patient::v1;
use schemas::sealed::DataKey;
use schemas::PublishedEvent;

use crate::stream::StoredEvent;

/// Why a stored event cannot be published. Messages name ids and types, never data.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("no topic for aggregate type {0}")]
    NoTopic(String),
    #[error("stored {event_type} event {aggregate_id}/{sequence} does not decode")]
    Undecodable {
        event_type: String,
        aggregate_id: String,
        sequence: u64,
    },
}

/// The topic (without prefix) and the published form of a stored event, opened by
/// [`crate::stream::open`]. The data is sealed with `key` unless the contract publishes the event
/// type in the clear ([`schemas::sealed::is_published_in_clear`]); an event still sealed (its
/// aggregate was forgotten) is published as stored, readable by nobody.
///
/// # Errors
///
/// [`MappingError`] for an aggregate type without a topic or a payload that does not decode.
pub fn to_published(
    event: &StoredEvent,
    key: Option<&DataKey>,
) -> Result<(&'static str, PublishedEvent), MappingError> {
    let topic = schemas::topics::for_aggregate_type(&event.aggregate_type)
        .ok_or_else(|| MappingError::NoTopic(event.aggregate_type.clone()))?;
    let envelope = |event_type: &str, sealed: bool, data: Vec<u8>| PublishedEvent {
        id: schemas::envelope::event_id_in_epoch(
            &event.aggregate_type,
            &event.aggregate_id,
            event.sequence,
            event.epoch,
        ),
        event_type: event_type.to_owned(),
        major_version: v1::MAJOR,
        time: event.recorded_at,
        subject: event.aggregate_id.clone(),
        sequence: event.sequence,
        position: event.position,
        epoch: event.epoch,
        request_id: event.metadata("request_id").map(str::to_owned),
        traceparent: event.metadata("traceparent").map(str::to_owned),
        user_id: event.metadata("user_id").map(str::to_owned),
        event_hash: event.hash.as_deref().map(hex::encode),
        sealed,
        data,
    };
    if let Some(sealed) = crate::repository::sealed_of(&event.payload) {
        return Ok((topic, envelope(&event.event_type, true, sealed.to_json())));
    }
    let undecodable = || MappingError::Undecodable {
        event_type: event.event_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        sequence: event.sequence,
    };
    let (event_type, data) = match event.aggregate_type.as_str() {
        crate::access::ACCESS_TYPE => {
            // Access entries are stored in their published form: ids and codes, no patient data.
            let entry: schemas::access::v1::AccessEntry =
                serde_json::from_value(event.payload.clone()).map_err(|_| undecodable())?;
            (
                entry.event_type(),
                serde_json::to_vec(&entry).unwrap_or_default(),
            )
        }
        Patient::TYPE => {
            let domain_event: patient::PatientEvent =
                serde_json::from_value(event.payload.clone()).map_err(|_| undecodable())?;
            let patient_id =
                uuid::Uuid::parse_str(&event.aggregate_id).map_err(|_| undecodable())?;
            let wire = patient_to_v1(patient_id, domain_event);
            (wire.event_type(), wire.to_json())
        }
        MedicalRecord::TYPE => {
            let domain_event: MedicalRecordEvent =
                serde_json::from_value(event.payload.clone()).map_err(|_| undecodable())?;
            let patient_id =
                uuid::Uuid::parse_str(&event.aggregate_id).map_err(|_| undecodable())?;
            let wire = medical_record_to_v1(patient_id, &domain_event).ok_or_else(undecodable)?;
            (wire.event_type(), wire.to_json())
        }
        domain::medical_record::ClinicalEntry::TYPE => {
            let domain_event: MedicalRecordEvent =
                serde_json::from_value(event.payload.clone()).map_err(|_| undecodable())?;
            let patient_id = uuid::Uuid::parse_str(event.key_owner()).map_err(|_| undecodable())?;
            let wire = clinical_entry_to_v1(patient_id, &domain_event).ok_or_else(undecodable)?;
            (wire.event_type(), wire.to_json())
        }
        domain::scheduling::Appointment::TYPE => {
            let domain_event: domain::scheduling::AppointmentEvent =
                serde_json::from_value(event.payload.clone()).map_err(|_| undecodable())?;
            let appointment_id =
                uuid::Uuid::parse_str(&event.aggregate_id).map_err(|_| undecodable())?;
            let patient_id = uuid::Uuid::parse_str(event.key_owner()).map_err(|_| undecodable())?;
            let wire = appointment_to_v1(appointment_id, patient_id, &domain_event)
                .ok_or_else(undecodable)?;
            (wire.event_type(), wire.to_json())
        }
        domain::scheduling::notification::Notification::TYPE => {
            let value = event.payload.as_object().and_then(|o| o.iter().next());
            let (event_type, data) = value.ok_or_else(undecodable)?;
            let mut data = data.as_object().cloned().ok_or_else(undecodable)?;
            data.insert(
                "notification_id".into(),
                serde_json::json!(event.aggregate_id),
            );
            let wire = schemas::notification::v1::NotificationEvent::decode(
                event_type,
                &serde_json::to_vec(&data).unwrap_or_default(),
            )
            .map_err(|_| undecodable())?;
            (wire.event_type(), wire.to_json())
        }
        other => return Err(MappingError::NoTopic(other.to_owned())),
    };
    let published = envelope(event_type, false, data);
    Ok((
        topic,
        match key {
            Some(key) if !schemas::sealed::is_published_in_clear(event_type) => {
                published.sealed_with(key)
            }
            _ => published,
        },
    ))
}

/// The Kafka record key of a stored event: the patient it is about, so each patient's events
/// (and accesses) keep their order within a partition.
pub fn record_key(event: &StoredEvent) -> String {
    match event.aggregate_type.as_str() {
        domain::scheduling::Appointment::TYPE
        | domain::scheduling::notification::Notification::TYPE
        | domain::medical_record::ClinicalEntry::TYPE => event.key_owner().to_owned(),
        crate::access::ACCESS_TYPE => event
            .payload
            .get("patient_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&event.aggregate_id)
            .to_owned(),
        _ => event.aggregate_id.clone(),
    }
}

/// The published form of a medical record event. The domain's item types serialize field for
/// field as the contract's (a test holds them to it), so the item goes over as JSON; `None`
/// only if they ever part.
pub fn medical_record_to_v1(
    patient_id: uuid::Uuid,
    event: &MedicalRecordEvent,
) -> Option<schemas::medical_record::v1::MedicalRecordEvent> {
    schemas::medical_record::v1::MedicalRecordEvent::from_value(
        &event.event_type(),
        item_event_data(patient_id, event)?,
    )
    .ok()
}

/// The published form of a clinical entry's event (an observation, procedure or encounter):
/// shaped as the medical record's, on its own topic.
pub fn clinical_entry_to_v1(
    patient_id: uuid::Uuid,
    event: &MedicalRecordEvent,
) -> Option<schemas::clinical_entry::v1::ClinicalEntryEvent> {
    schemas::clinical_entry::v1::ClinicalEntryEvent::from_value(
        &event.event_type(),
        item_event_data(patient_id, event)?,
    )
    .ok()
}

/// The published JSON of an item event of patient `patient_id`.
fn item_event_data(
    patient_id: uuid::Uuid,
    event: &MedicalRecordEvent,
) -> Option<serde_json::Value> {
    use serde_json::{json, Value};
    let item = |content: &domain::medical_record::ItemContent| -> Option<Value> {
        let mut value = serde_json::to_value(content).ok()?;
        value.as_object_mut()?.remove("kind");
        Some(value)
    };
    let data = match event {
        MedicalRecordEvent::ItemRecorded(e) => json!({
            "patient_id": patient_id,
            "item_id": e.item_id,
            "item": item(&e.content)?,
            "reason": e.reason.as_ref().map(patient::Reason::as_str),
            "acknowledged_warnings": e.acknowledged_warnings,
            "recorded_at": e.recorded_at,
        }),
        MedicalRecordEvent::ItemRevised(e) => json!({
            "patient_id": patient_id,
            "item_id": e.item_id,
            "item": item(&e.content)?,
            "reason": e.reason.as_str(),
            "acknowledged_warnings": e.acknowledged_warnings,
            "revised_at": e.revised_at,
        }),
        MedicalRecordEvent::ItemEnteredInError(e) => json!({
            "patient_id": patient_id,
            "item_id": e.item_id,
            "kind": e.kind.code(),
            "reason": e.reason.as_str(),
            "entered_at": e.entered_at,
        }),
    };
    Some(data)
}

/// The published form of an appointment event: the domain's JSON (the contract mirrors it
/// field for field; a test holds them to it) with the appointment and patient ids.
pub fn appointment_to_v1(
    appointment_id: uuid::Uuid,
    patient_id: uuid::Uuid,
    event: &domain::scheduling::AppointmentEvent,
) -> Option<schemas::appointment::v1::AppointmentEvent> {
    let value = serde_json::to_value(event).ok()?;
    let (event_type, data) = value.as_object()?.iter().next()?;
    let mut data = data.as_object()?.clone();
    data.insert("appointment_id".into(), serde_json::json!(appointment_id));
    data.insert("patient_id".into(), serde_json::json!(patient_id));
    let bytes = serde_json::to_vec(&data).ok()?;
    schemas::appointment::v1::AppointmentEvent::decode(event_type, &bytes).ok()
}

fn name_to_v1(name: &patient::PersonName) -> v1::HumanName {
    v1::HumanName {
        given: name.given().to_vec(),
        family: name.family().to_owned(),
        prefix: name.prefix().to_vec(),
        suffix: name.suffix().to_vec(),
        preferred: name.preferred().map(str::to_owned),
    }
}

fn gender_to_v1(gender: patient::AdministrativeGender) -> v1::AdministrativeGender {
    match gender {
        patient::AdministrativeGender::Male => v1::AdministrativeGender::Male,
        patient::AdministrativeGender::Female => v1::AdministrativeGender::Female,
        patient::AdministrativeGender::Other => v1::AdministrativeGender::Other,
        patient::AdministrativeGender::Unknown => v1::AdministrativeGender::Unknown,
    }
}

fn identifier_to_v1(id: &patient::contact::Identifier) -> v1::Identifier {
    v1::Identifier {
        system: id.system.clone(),
        value: id.value.clone(),
        national: id.national,
    }
}

fn contact_to_v1(contact: &patient::contact::ContactInformation) -> v1::ContactInformation {
    v1::ContactInformation {
        phones: contact.phones.iter().map(phone_to_v1).collect(),
        emails: contact
            .emails
            .iter()
            .map(|e| v1::Email {
                address: e.address.as_str().to_owned(),
                preferred: e.preferred,
            })
            .collect(),
        addresses: contact
            .addresses
            .iter()
            .map(|a| v1::Address {
                address_use: a.address_use.code().to_owned(),
                lines: a.lines.clone(),
                city: a.city.clone(),
                state: a.state.clone(),
                postal_code: a.postal_code.clone(),
                country: a.country.as_ref().map(|c| c.as_str().to_owned()),
                preferred: a.preferred,
            })
            .collect(),
    }
}

fn phone_to_v1(p: &patient::contact::Phone) -> v1::Phone {
    v1::Phone {
        number: p.number.as_str().to_owned(),
        phone_use: p.phone_use.code().to_owned(),
        preferred: p.preferred,
    }
}

fn emergency_contact_to_v1(c: &patient::record::EmergencyContact) -> v1::EmergencyContact {
    v1::EmergencyContact {
        contact_id: c.contact_id,
        name: name_to_v1(&c.name),
        relationship: c.relationship.code().to_owned(),
        phones: c.phones.iter().map(phone_to_v1).collect(),
    }
}

fn coverage_to_v1(c: &patient::record::Coverage) -> v1::Coverage {
    v1::Coverage {
        coverage_id: c.coverage_id,
        payer: c.payer.clone(),
        plan: c.plan.clone(),
        member_id: c.member_id.clone(),
        group: c.group.clone(),
        subscriber_name: c.subscriber_name.as_ref().map(name_to_v1),
        relationship: c.relationship.code().to_owned(),
        start: c.start,
        end: c.end,
        priority: c.priority.code().to_owned(),
    }
}

/// The v1 wire form of a domain patient event.
pub fn patient_to_v1(patient_id: uuid::Uuid, event: patient::PatientEvent) -> v1::PatientEvent {
    match event {
        patient::PatientEvent::PatientRegistered(e) => {
            v1::PatientEvent::Registered(v1::PatientRegistered {
                patient_id,
                mrn: e.mrn.as_str().to_owned(),
                name: name_to_v1(&e.name),
                birth_date: e.birth_date.map(|d| d.date()),
                gender: gender_to_v1(e.gender),
                marital_status: e.marital_status.map(|m| m.code().to_owned()),
                languages: e.languages.iter().map(|l| l.as_str().to_owned()).collect(),
                identifiers: e.identifiers.iter().map(identifier_to_v1).collect(),
                contact: contact_to_v1(&e.contact),
                duplicate_override: e.duplicate_override.map(|o| v1::DuplicateOverride {
                    reason: o.reason.as_str().to_owned(),
                    candidates: o.candidates.iter().map(|c| c.as_uuid()).collect(),
                }),
                registered_at: e.registered_at,
            })
        }
        patient::PatientEvent::DemographicsCorrected(e) => {
            v1::PatientEvent::DemographicsCorrected(v1::DemographicsCorrected {
                patient_id,
                name: name_to_v1(&e.name),
                birth_date: e.birth_date.map(|d| d.date()),
                gender: gender_to_v1(e.gender),
                marital_status: e.marital_status.map(|m| m.code().to_owned()),
                languages: e.languages.iter().map(|l| l.as_str().to_owned()).collect(),
                reason: e.reason.as_str().to_owned(),
                corrected_at: e.corrected_at,
            })
        }
        patient::PatientEvent::PatientArchived(e) => {
            v1::PatientEvent::Archived(v1::PatientArchived {
                patient_id,
                reason: e.reason.as_str().to_owned(),
                archived_at: e.archived_at,
            })
        }
        patient::PatientEvent::PatientRestored(e) => {
            v1::PatientEvent::Restored(v1::PatientRestored {
                patient_id,
                reason: e.reason.as_str().to_owned(),
                restored_at: e.restored_at,
            })
        }
        patient::PatientEvent::ContactInformationChanged(e) => {
            v1::PatientEvent::ContactInformationChanged(v1::ContactInformationChanged {
                patient_id,
                contact: contact_to_v1(&e.contact),
                changed_at: e.changed_at,
            })
        }
        patient::PatientEvent::IdentifierAdded(e) => {
            v1::PatientEvent::IdentifierAdded(v1::IdentifierAdded {
                patient_id,
                identifier: identifier_to_v1(&e.identifier),
                added_at: e.added_at,
            })
        }
        patient::PatientEvent::IdentifierRemoved(e) => {
            v1::PatientEvent::IdentifierRemoved(v1::IdentifierRemoved {
                patient_id,
                identifier: identifier_to_v1(&e.identifier),
                reason: e.reason.as_str().to_owned(),
                removed_at: e.removed_at,
            })
        }
        patient::PatientEvent::PreferencesUpdated(e) => {
            let p = e.preferences;
            v1::PatientEvent::PreferencesUpdated(v1::PreferencesUpdated {
                patient_id,
                preferences: v1::Preferences {
                    communication_language: p.communication_language.map(|l| l.as_str().to_owned()),
                    preferred_channel: p.preferred_channel.map(|c| c.code().to_owned()),
                    reminder_opt_in: p.reminder_opt_in,
                    quiet_hours: p.quiet_hours.map(|q| v1::QuietHours {
                        start: q.start.format("%H:%M").to_string(),
                        end: q.end.format("%H:%M").to_string(),
                    }),
                    interpreter_needed: p.interpreter_needed,
                },
                updated_at: e.updated_at,
            })
        }
        patient::PatientEvent::EmergencyContactAdded(e) => {
            v1::PatientEvent::EmergencyContactAdded(v1::EmergencyContactAdded {
                patient_id,
                contact: emergency_contact_to_v1(&e.contact),
                added_at: e.added_at,
            })
        }
        patient::PatientEvent::EmergencyContactChanged(e) => {
            v1::PatientEvent::EmergencyContactChanged(v1::EmergencyContactChanged {
                patient_id,
                contact: emergency_contact_to_v1(&e.contact),
                changed_at: e.changed_at,
            })
        }
        patient::PatientEvent::EmergencyContactRemoved(e) => {
            v1::PatientEvent::EmergencyContactRemoved(v1::EmergencyContactRemoved {
                patient_id,
                contact_id: e.contact_id,
                removed_at: e.removed_at,
            })
        }
        patient::PatientEvent::CoverageAdded(e) => {
            v1::PatientEvent::CoverageAdded(v1::CoverageAdded {
                patient_id,
                coverage: coverage_to_v1(&e.coverage),
                added_at: e.added_at,
            })
        }
        patient::PatientEvent::CoverageChanged(e) => {
            v1::PatientEvent::CoverageChanged(v1::CoverageChanged {
                patient_id,
                coverage: coverage_to_v1(&e.coverage),
                changed_at: e.changed_at,
            })
        }
        patient::PatientEvent::PatientMerged(e) => v1::PatientEvent::Merged(v1::PatientMerged {
            patient_id,
            target_id: e.target_id.as_uuid(),
            reason: e.reason.as_str().to_owned(),
            merged_at: e.merged_at,
        }),
        patient::PatientEvent::PatientAbsorbed(e) => {
            v1::PatientEvent::Absorbed(v1::PatientAbsorbed {
                patient_id,
                source_id: e.source_id.as_uuid(),
                gained_identifiers: e.gained_identifiers.iter().map(identifier_to_v1).collect(),
                gained_contact: contact_to_v1(&e.gained_contact),
                reason: e.reason.as_str().to_owned(),
                absorbed_at: e.absorbed_at,
            })
        }
        patient::PatientEvent::PatientUnmerged(e) => {
            v1::PatientEvent::Unmerged(v1::PatientUnmerged {
                patient_id,
                target_id: e.target_id.as_uuid(),
                status: e.restored_status.code().to_owned(),
                reason: e.reason.as_str().to_owned(),
                unmerged_at: e.unmerged_at,
            })
        }
        patient::PatientEvent::AbsorptionReverted(e) => {
            v1::PatientEvent::AbsorptionReverted(v1::AbsorptionReverted {
                patient_id,
                source_id: e.source_id.as_uuid(),
                removed_identifiers: e.removed_identifiers.iter().map(identifier_to_v1).collect(),
                removed_contact: contact_to_v1(&e.removed_contact),
                reason: e.reason.as_str().to_owned(),
                reverted_at: e.reverted_at,
            })
        }
        patient::PatientEvent::CoverageEnded(e) => {
            v1::PatientEvent::CoverageEnded(v1::CoverageEnded {
                patient_id,
                coverage_id: e.coverage_id,
                end: e.end,
                reason: e.reason.as_str().to_owned(),
                ended_at: e.ended_at,
            })
        }
        patient::PatientEvent::CareRelationshipStarted(e) => {
            v1::PatientEvent::CareRelationshipStarted(v1::CareRelationshipStarted {
                patient_id,
                practitioner: e.practitioner.as_str().to_owned(),
                role: e.role.code().to_owned(),
                started_at: e.started_at,
            })
        }
        patient::PatientEvent::CareRelationshipEnded(e) => {
            v1::PatientEvent::CareRelationshipEnded(v1::CareRelationshipEnded {
                patient_id,
                practitioner: e.practitioner.as_str().to_owned(),
                reason: e.reason.as_str().to_owned(),
                ended_at: e.ended_at,
            })
        }
        patient::PatientEvent::ConsentGranted(e) => {
            v1::PatientEvent::ConsentGranted(v1::ConsentGranted {
                patient_id,
                consent_id: e.consent_id,
                directive: directive_to_v1(&e.directive),
                granted_at: e.granted_at,
            })
        }
        patient::PatientEvent::ConsentWithdrawn(e) => {
            v1::PatientEvent::ConsentWithdrawn(v1::ConsentWithdrawn {
                patient_id,
                consent_id: e.consent_id,
                reason: e.reason.as_str().to_owned(),
                withdrawn_at: e.withdrawn_at,
            })
        }
        patient::PatientEvent::LegalHoldPlaced(e) => {
            v1::PatientEvent::LegalHoldPlaced(v1::LegalHoldPlaced {
                patient_id,
                reason: e.reason.as_str().to_owned(),
                placed_at: e.placed_at,
            })
        }
        patient::PatientEvent::LegalHoldReleased(e) => {
            v1::PatientEvent::LegalHoldReleased(v1::LegalHoldReleased {
                patient_id,
                reason: e.reason.as_str().to_owned(),
                released_at: e.released_at,
            })
        }
        patient::PatientEvent::PatientForgotten(e) => {
            v1::PatientEvent::Forgotten(v1::PatientForgotten {
                patient_id,
                reason: e.reason.code().to_owned(),
                reference: e.reference.map(|r| r.as_str().to_owned()),
                forgotten_at: e.forgotten_at,
            })
        }
    }
}

fn directive_to_v1(directive: &patient::governance::ConsentDirective) -> v1::ConsentDirective {
    use patient::governance::ConsentDirective as D;
    match directive {
        D::ShareWithOrganization { organization } => v1::ConsentDirective::ShareWithOrganization {
            organization: organization.as_str().to_owned(),
        },
        D::ShareWithRole { role } => v1::ConsentDirective::ShareWithRole { role: role.clone() },
        D::ResearchOptOut => v1::ConsentDirective::ResearchOptOut,
    }
}

#[cfg(test)]
mod tests {
    use domain::medical_record::{ItemContent, ItemEnteredInError, ItemRecorded, ItemRevised};
    use serde_json::{json, Value};

    use super::*;

    /// One item of every kind, in the domain's stored form, with every optional field set.
    fn items() -> Vec<ItemContent> {
        let concept =
            json!({"system": "http://snomed.info/sct", "code": "91936005", "text": "Penicillin"});
        [
            json!({"kind": "allergy", "substance": concept, "category": "medication", "criticality": "high",
                   "reactions": [{"manifestation": {"text": "Hives"}, "severity": "mild"}],
                   "clinical_status": "active", "verification_status": "confirmed", "onset": "2020-01-02", "note": "n"}),
            json!({"kind": "medication", "medication": concept, "dose": {"value": "500", "unit": "mg"}, "route": "oral",
                   "frequency": {"count": 3, "period": 1, "period_unit": "d", "as_needed": true},
                   "start": "2026-01-01", "end": "2026-02-01", "status": "active", "prescriber": "dr-a",
                   "reason_for_use": {"text": "Infection"}, "note": "n"}),
            json!({"kind": "immunization", "vaccine": {"system": "http://hl7.org/fhir/sid/cvx", "code": "208", "text": "COVID-19"},
                   "occurred_on": "2026-01-01", "lot_number": "L1", "site": "left-arm", "route": "intramuscular",
                   "performer": "nurse-b", "status": "completed", "note": "n"}),
            json!({"kind": "problem", "condition": {"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "text": "Type 2 diabetes"},
                   "onset": "2019-01-01", "abatement": "2020-01-01", "clinical_status": "resolved", "severity": "moderate", "note": "n"}),
            json!({"kind": "history", "category": "family", "description": {"text": "Breast cancer"}, "relationship": "mother",
                   "occurred_on": "2001-01-01", "note": "n"}),
            json!({"kind": "document", "title": "Discharge", "document_type": {"text": "Discharge summary"}, "author": "dr-a",
                   "date": "2026-01-01", "content": {"media_type": "text/plain", "size": 3, "sha256": "ab", "text_sha256": "cd", "text_length": 3},
                   "note": "n"}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
    }

    #[test]
    fn every_medical_record_event_maps_to_its_published_type() {
        let patient = uuid::Uuid::from_u128(7);
        let item_id =
            serde_json::from_value(json!("00000000-0000-0000-0000-000000000001")).unwrap();
        let reason = serde_json::from_value(json!("typo")).unwrap();
        let at = chrono::DateTime::UNIX_EPOCH;
        let mut seen = Vec::new();
        for content in items() {
            let kind = content.kind();
            let events = [
                MedicalRecordEvent::ItemRecorded(ItemRecorded {
                    patient_id: None,
                    item_id,
                    content: content.clone(),
                    reason: Some(Clone::clone(&reason)),
                    acknowledged_warnings: vec![],
                    recorded_at: at,
                }),
                MedicalRecordEvent::ItemRevised(ItemRevised {
                    item_id,
                    content,
                    reason: Clone::clone(&reason),
                    acknowledged_warnings: vec![],
                    revised_at: at,
                }),
                MedicalRecordEvent::ItemEnteredInError(ItemEnteredInError {
                    item_id,
                    kind,
                    reason: Clone::clone(&reason),
                    entered_at: at,
                }),
            ];
            for event in events {
                let wire = medical_record_to_v1(patient, &event)
                    .unwrap_or_else(|| panic!("{} does not map", event.event_type()));
                assert_eq!(wire.event_type(), event.event_type());
                seen.push(wire.event_type());
            }
        }
        assert_eq!(seen, schemas::medical_record::v1::EVENT_TYPES);
    }

    #[test]
    fn every_appointment_event_maps_to_its_published_type() {
        use domain::scheduling::appointment::{
            Booking, Cancellation, CancellationReason, WaitlistWish,
        };
        use domain::scheduling::{
            AppointmentEvent as E, AppointmentStatus as S, Interval, Priority,
        };
        let at = chrono::DateTime::UNIX_EPOCH;
        let interval = Interval::new(at, at + chrono::Duration::minutes(30));
        let booking = Booking {
            interval,
            resources: vec!["dr-a".into(), "room-1".into()],
        };
        let reason: patient::Reason = serde_json::from_value(json!("moved")).unwrap();
        let events = [
            E::AppointmentCreated {
                patient_id: patient::PatientId::new(uuid::Uuid::from_u128(7)),
                service: "consultation".into(),
                priority: Priority::Urgent,
                status: S::Waitlist,
                booking: Some(booking.clone()),
                hold_expires_at: Some(at),
                waitlist: Some(WaitlistWish {
                    window: interval,
                    practitioner: Some("dr-a".into()),
                }),
                at,
            },
            E::AppointmentOffered {
                booking: booking.clone(),
                expires_at: at,
                at,
            },
            E::AppointmentRescheduled {
                booking,
                reason: Clone::clone(&reason),
                at,
            },
            E::AppointmentStatusChanged {
                from: S::Booked,
                to: S::Arrived,
                at,
            },
            E::AppointmentCancelled {
                cancellation: Cancellation {
                    reason: CancellationReason::PatientSick,
                    by: serde_json::from_value(json!("front-desk")).unwrap(),
                    at,
                    late: true,
                },
            },
            E::AppointmentOfferExpired { at },
            E::AppointmentEnteredInError { reason, at },
        ];
        let types: Vec<&str> = events
            .iter()
            .map(|e| {
                appointment_to_v1(uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(7), e)
                    .unwrap_or_else(|| panic!("{e:?} does not map"))
                    .event_type()
            })
            .collect();
        assert_eq!(types, schemas::appointment::v1::EVENT_TYPES);
    }

    fn stored(
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        payload: Value,
    ) -> StoredEvent {
        StoredEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: 2,
            event_type: event_type.to_owned(),
            event_version: "1.0".to_owned(),
            payload,
            metadata: json!({ "user_id": "u-1" }),
            position: 9,
            transaction_id: 1,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            epoch: 0,
            hash: Some(vec![1, 2, 3]),
        }
    }

    #[test]
    fn what_the_relay_publishes_verifies_as_a_consumer_checks_it() {
        // Arrange: a sealed stored event of every aggregate type whose events are sealed (a
        // forgotten patient's are published as stored, which takes this path), an event sealed
        // on the way out, and the events published in the clear.
        let patient = uuid::Uuid::from_u128(7).to_string();
        let other = uuid::Uuid::from_u128(1).to_string();
        let key = DataKey::generate(&patient);
        let sealed_as_stored = |aggregate_type: &str, event_type: &str| {
            let id = schemas::envelope::event_id(aggregate_type, &other, 2);
            let sealed = schemas::sealed::seal(&key, id.as_bytes(), b"{}");
            stored(
                aggregate_type,
                &other,
                event_type,
                json!({ "sealed": sealed }),
            )
        };
        let mut events = vec![
            sealed_as_stored("Patient", "PatientRegistered"),
            sealed_as_stored("MedicalRecord", "AllergyRecorded"),
            sealed_as_stored("Appointment", "AppointmentCreated"),
            sealed_as_stored("Notification", "AppointmentReminder"),
            stored(
                "Patient",
                &patient,
                "PatientArchived",
                json!({ "PatientArchived": { "reason": "moved", "archived_at": "2026-11-27T12:00:00Z" } }),
            ),
            stored(
                "Patient",
                &patient,
                "PatientForgotten",
                json!({ "PatientForgotten": {
                    "reason": "patient-request", "reference": null,
                    "forgotten_at": "2026-11-27T12:00:00Z"
                } }),
            ),
        ];
        let entry = schemas::access::v1::AccessEntry {
            entry_id: uuid::Uuid::from_u128(3),
            patient_id: uuid::Uuid::from_u128(7),
            user_id: "u-1".into(),
            roles: vec!["clinician".into()],
            organization: None,
            action: "read".into(),
            purpose: "treatment".into(),
            outcome: "granted".into(),
            emergency_reason: None,
            request_id: None,
            accessed_at: chrono::DateTime::UNIX_EPOCH,
        };
        let mut access = stored(
            crate::access::ACCESS_TYPE,
            &entry.entry_id.to_string(),
            entry.event_type(),
            serde_json::to_value(&entry).unwrap(),
        );
        access.sequence = 1;
        events.push(access);

        for event in &events {
            // Act: the relay's mapping, with the key of the patient when it has one.
            let (_, published) = to_published(event, Some(&key)).unwrap();

            // Assert
            assert_eq!(published.verify(), Ok(()), "{event:?}");
            assert_eq!(
                published.sealed,
                !schemas::sealed::is_published_in_clear(&published.event_type),
                "{event:?}"
            );
            assert!(published.opened_with(&key).is_ok(), "{event:?}");
        }
    }

    #[test]
    fn an_event_written_after_a_restore_is_published_under_its_epochs_identity() {
        let patient = uuid::Uuid::from_u128(7).to_string();
        let key = DataKey::generate(&patient);
        let mut event = stored(
            "Patient",
            &patient,
            "PatientArchived",
            json!({ "PatientArchived": { "reason": "moved", "archived_at": "2026-11-27T12:00:00Z" } }),
        );
        let (_, before) = to_published(&event, Some(&key)).unwrap();
        event.epoch = 1;

        let (_, after) = to_published(&event, Some(&key)).unwrap();

        assert_eq!(after.epoch, 1);
        assert_eq!(
            after.id,
            schemas::envelope::event_id_in_epoch("Patient", &patient, 2, 1)
        );
        assert_ne!(after.id, before.id);
        assert_eq!(after.verify(), Ok(()));
        assert!(after.opened_with(&key).is_ok());
    }

    #[test]
    fn the_event_store_stores_in_the_clear_exactly_what_the_contract_publishes_in_the_clear() {
        use crate::repository::{CLEAR_EVENT_TYPES, SHREDDING_EVENT_TYPE};
        assert_eq!(CLEAR_EVENT_TYPES, schemas::sealed::CLEAR_EVENT_TYPES);
        for event_type in CLEAR_EVENT_TYPES {
            assert!(schemas::sealed::is_published_in_clear(event_type));
        }
        assert!(CLEAR_EVENT_TYPES.contains(&SHREDDING_EVENT_TYPE));
    }
}
