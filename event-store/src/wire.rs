//! Stored events are the domain's types; published events are the contract's. This module is
//! the one place that maps one to the other, so the domain can change without breaking
//! consumers and the contract can grow without touching the store.

use cqrs_es::Aggregate;
use domain::patient::{self, Patient};
use schemas::patient::v1;
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

/// The topic (without prefix) and the published form of a stored event.
///
/// # Errors
///
/// [`MappingError`] for an aggregate type without a topic or a payload that does not decode.
pub fn to_published(event: &StoredEvent) -> Result<(&'static str, PublishedEvent), MappingError> {
    let topic = schemas::topics::for_aggregate_type(&event.aggregate_type)
        .ok_or_else(|| MappingError::NoTopic(event.aggregate_type.clone()))?;
    let undecodable = || MappingError::Undecodable {
        event_type: event.event_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        sequence: event.sequence,
    };
    let (event_type, data) = match event.aggregate_type.as_str() {
        Patient::TYPE => {
            let domain_event: patient::PatientEvent =
                serde_json::from_value(event.payload.clone()).map_err(|_| undecodable())?;
            let patient_id =
                uuid::Uuid::parse_str(&event.aggregate_id).map_err(|_| undecodable())?;
            let wire = patient_to_v1(patient_id, domain_event);
            (wire.event_type(), wire.to_json())
        }
        other => return Err(MappingError::NoTopic(other.to_owned())),
    };
    Ok((
        topic,
        PublishedEvent {
            id: schemas::envelope::event_id(
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence,
            ),
            event_type: event_type.to_owned(),
            major_version: v1::MAJOR,
            time: event.recorded_at,
            subject: event.aggregate_id.clone(),
            sequence: event.sequence,
            position: event.position,
            request_id: event.metadata("request_id").map(str::to_owned),
            traceparent: event.metadata("traceparent").map(str::to_owned),
            data,
        },
    ))
}

fn name_to_v1(name: &patient::PersonName) -> v1::HumanName {
    v1::HumanName {
        given: name.given().to_vec(),
        family: name.family().to_owned(),
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
        phones: contact
            .phones
            .iter()
            .map(|p| v1::Phone {
                number: p.number.as_str().to_owned(),
                phone_use: p.phone_use.code().to_owned(),
                preferred: p.preferred,
            })
            .collect(),
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
    }
}
