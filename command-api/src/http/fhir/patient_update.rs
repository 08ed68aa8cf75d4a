//! `PUT /Patient/{id}` with `If-Match: W/"n"`: the patient record brought to the resource sent,
//! as the native commands a registrar would send (corrected demographics, changed contact
//! information, identifiers added and removed, emergency contacts added, changed and removed),
//! all of them or none, in one unit of work.
//!
//! What the service does not hold is ignored, as on create. What it holds but changes only
//! through other commands is refused when it differs from the record: the status (`active`)
//! and merges (`link`). Identifiers shown masked (national
//! ones) count as unchanged when sent back as shown; the MRN is the service's and cannot change.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use domain::patient::contact::Identifier;
use domain::patient::{
    CorrectDemographics, PatientCommand, PatientError, PatientId, PatientRecord, Reason,
    RecordChange, RemoveIdentifier,
};
use domain::FieldError;
use serde_json::Value;

use super::patient::{patient_paths, registration, to_fhir, MRN_SYSTEM};
use super::patient_contacts::{emergency_contacts, same};
use super::{expected_version, Write, CHANGE_REASON, DEFAULT_REASON};
use crate::auth::permission;
use crate::http::patient_commands::metadata;
use crate::http::{ApiError, AppState};
use application::policy::Action;
use domain::patient::record::EmergencyContact;

/// The identifiers of a FHIR Patient (the MRN left out), as `(system, value)`.
fn identifiers_of(patient: &Value) -> Vec<(String, String)> {
    patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["system"] != MRN_SYSTEM)
        .map(|i| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&i["system"]), text(&i["value"]))
        })
        .collect()
}

/// The languages the record shows as `communication`: the preferred language first when it is
/// not among the patient's languages, as [`to_fhir`] renders them.
fn shown_languages(record: &PatientRecord) -> Vec<String> {
    let mut languages: Vec<String> = record
        .languages
        .iter()
        .map(|l| l.as_str().to_owned())
        .collect();
    if let Some(preferred) = &record.preferences.communication_language {
        if !languages.iter().any(|l| l == preferred.as_str()) {
            languages.insert(0, preferred.as_str().to_owned());
        }
    }
    languages
}

/// The commands that bring `record` to `sent`, in order; `Err` names what cannot change here.
fn commands(
    record: &PatientRecord,
    sent: &Value,
    (reason, at): (&Reason, chrono::DateTime<chrono::Utc>),
) -> Result<Vec<(Action, PatientCommand)>, ApiError> {
    let shown = to_fhir(record, 0);
    for (element, how) in [
        ("active", "by archiving or restoring the patient"),
        ("link", "by merging or unmerging patients"),
    ] {
        let differs = match (sent.get(element), shown.get(element)) {
            (None, _) => false,
            (Some(given), Some(held)) => given != held,
            (Some(given), None) => !given.is_null(),
        };
        if differs {
            return Err(ApiError::Validation(
                FieldError::new(
                    format!("Patient.{element}"),
                    format!("cannot change in an update: it changes {how}"),
                )
                .into(),
            ));
        }
    }
    // The identifiers sent back as shown are kept; the others are new, to be checked.
    let held: Vec<(String, String, &Identifier)> = record
        .identifiers
        .iter()
        .map(|i| (i.system.clone(), i.display_value(), i))
        .collect();
    let given = identifiers_of(sent);
    let mut fresh = sent.clone();
    if let Some(list) = fresh["identifier"].as_array_mut() {
        list.retain(|i| {
            let pair = (
                i["system"].as_str().unwrap_or_default(),
                i["value"].as_str().unwrap_or_default(),
            );
            !held
                .iter()
                .any(|(system, shown, _)| (system.as_str(), shown.as_str()) == pair)
        });
    }
    let today = at.date_naive();
    let parsed = crate::http::input::patient::registration(&registration(&fresh), today)
        .map_err(|errors| ApiError::Validation(patient_paths(&errors)))?;
    let mut commands = Vec::new();
    let languages: Vec<String> = parsed
        .languages
        .iter()
        .map(|l| l.as_str().to_owned())
        .collect();
    let correction = CorrectDemographics {
        name: (parsed.name != record.name).then(|| parsed.name.clone()),
        birth_date: (parsed.birth_date != record.birth_date)
            .then_some(parsed.birth_date)
            .flatten(),
        gender: (parsed.gender != record.gender).then_some(parsed.gender),
        marital_status: (parsed.marital_status != record.marital_status)
            .then_some(parsed.marital_status)
            .flatten(),
        languages: (languages != shown_languages(record)).then(|| parsed.languages.clone()),
        reason: reason.clone(),
        at,
    };
    if parsed.birth_date.is_none() && record.birth_date.is_some()
        || parsed.marital_status.is_none() && record.marital_status.is_some()
    {
        return Err(ApiError::Validation(
            FieldError::new(
                if parsed.birth_date.is_none() && record.birth_date.is_some() {
                    "Patient.birthDate"
                } else {
                    "Patient.maritalStatus"
                },
                "cannot be removed: correct it instead",
            )
            .into(),
        ));
    }
    let corrects = correction.name.is_some()
        || correction.birth_date.is_some()
        || correction.gender.is_some()
        || correction.marital_status.is_some()
        || correction.languages.is_some();
    if corrects {
        commands.push((
            Action::CorrectDemographics,
            PatientCommand::CorrectDemographics(correction),
        ));
    }
    if parsed.contact != record.contact {
        commands.push((
            Action::ChangeContactInformation,
            PatientCommand::Change(RecordChange::ChangeContactInformation {
                contact: parsed.contact.clone(),
                at,
            }),
        ));
    }
    for (system, shown, identifier) in &held {
        if !given.iter().any(|(s, v)| s == system && v == shown) {
            commands.push((
                Action::ChangeIdentifiers,
                PatientCommand::Change(RecordChange::RemoveIdentifier(RemoveIdentifier {
                    system: identifier.system.clone(),
                    value: identifier.value.clone(),
                    reason: reason.clone(),
                    at,
                })),
            ));
        }
    }
    for identifier in parsed.identifiers {
        commands.push((
            Action::ChangeIdentifiers,
            PatientCommand::Change(RecordChange::AddIdentifier { identifier, at }),
        ));
    }
    // Emergency contacts by position: one that differs is changed, one more is added, one
    // fewer is removed.
    let contacts = emergency_contacts(sent).map_err(ApiError::Validation)?;
    let held = &record.emergency_contacts;
    for i in 0..contacts.len().max(held.len()) {
        let change = match (held.get(i), contacts.get(i)) {
            (Some(old), Some(new)) if same(old, new) => continue,
            (Some(old), Some(new)) => RecordChange::ChangeEmergencyContact {
                contact: EmergencyContact {
                    contact_id: old.contact_id,
                    ..new.clone()
                },
                at,
            },
            (Some(old), None) => RecordChange::RemoveEmergencyContact {
                contact_id: old.contact_id,
                at,
            },
            (None, Some(new)) => RecordChange::AddEmergencyContact {
                contact: new.clone(),
                at,
            },
            (None, None) => continue,
        };
        commands.push((
            Action::ChangeEmergencyContacts,
            PatientCommand::Change(change),
        ));
    }
    Ok(commands)
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/Patient/{id}", axum::routing::put(update))
}

/// `PUT /Patient/{id}`.
async fn update(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    write: Write<permission::CorrectDemographics>,
) -> Result<Response, ApiError> {
    let expected = expected_version(&write.headers)?;
    let id = PatientId::parse("id", &raw).map_err(|_| ApiError::NotFound)?;
    if write.resource["resourceType"] != "Patient" || write.resource["id"].as_str() != Some(&raw) {
        return Err(ApiError::Validation(
            FieldError::new("Patient.id", "must be a Patient with the id in the address").into(),
        ));
    }
    let reason_text = write
        .headers
        .get(CHANGE_REASON)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_REASON);
    let reason = Reason::parse(CHANGE_REASON, reason_text)
        .map_err(|e| ApiError::invalid_parameter("X-Change-Reason", &e.message))?;
    // Inside a transaction, its unit; otherwise one of its own, so that the commands of one
    // update are stored together or not at all.
    let (scoped, own) = state.in_some_unit();
    let services = scoped.services();
    application::reach::changeable_by(services, &write.user, Action::CorrectDemographics, id)
        .await?;
    let (patient, current) = services.store.load(id).await?.ok_or(ApiError::NotFound)?;
    if patient.forgotten().is_some() {
        return Err(ApiError::Gone);
    }
    let record = patient.record().ok_or(ApiError::NotFound)?;
    if current != expected {
        return Err(ApiError::PreconditionFailed { current });
    }
    let commands = commands(record, &write.resource, (&reason, (state.clock)()))?;
    let mut after = (patient.clone(), current);
    for (i, (action, command)) in commands.into_iter().enumerate() {
        after = application::patients::change(
            services,
            &write.user,
            (action, command),
            (id, (i == 0).then_some(expected)),
            metadata(&write.user, &write.ctx, None),
        )
        .await
        .map_err(|e| match e {
            application::services::UseCaseError::Rule(PatientError::CorrectionChangesNothing) => {
                ApiError::Validation(
                    FieldError::new("Patient", "changes nothing the record holds").into(),
                )
            }
            other => other.into(),
        })?;
    }
    if let Some(unit) = own {
        unit.commit().await?;
    }
    let (patient, version) = after;
    let record = patient.record().ok_or(ApiError::NotFound)?;
    let answer = super::versioned(StatusCode::OK, &to_fhir(record, version), version);
    Ok(answer)
}
