//! Registering a patient: the use case behind `POST /v1/patients` and
//! `patient-service-tools match-eval`.

use chrono::{DateTime, NaiveDate, Utc};
use domain::matching::MatchRecord;
use domain::patient::contact::{ContactInformation, Identifier};
use domain::patient::record::LanguageTag;
use domain::patient::{
    AdministrativeGender, BirthDate, DuplicateOverride, MaritalStatus, Patient, PatientCommand,
    PatientId, PersonName, Reason, RegisterPatient,
};
use event_store::command::{CommandError, CommandMetadata};
use event_store::store::PatientStore;
use sqlx::PgPool;

use crate::matching::{self, Match};

/// A registration as the caller sent it, parsed.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: PersonName,
    pub birth_date: Option<BirthDate>,
    pub gender: AdministrativeGender,
    pub marital_status: Option<MaritalStatus>,
    pub languages: Vec<LanguageTag>,
    pub identifiers: Vec<Identifier>,
    pub contact: ContactInformation,
    /// The reason to register despite likely duplicates, if the caller gave one.
    pub duplicate_override: Option<Reason>,
}

impl Registration {
    /// What the matcher compares of this registration.
    pub fn match_record(&self) -> MatchRecord {
        match_record(
            Some(&self.name),
            self.birth_date.map(|d| d.date()),
            &self.identifiers,
            &self.contact,
        )
    }
}

/// What the matcher compares of a person: their name, birth date, identifiers and contact
/// points (the preferred address).
pub fn match_record(
    name: Option<&PersonName>,
    birth_date: Option<NaiveDate>,
    identifiers: &[Identifier],
    contact: &ContactInformation,
) -> MatchRecord {
    let (given, family) = name.map_or((&[][..], ""), |n| (n.given(), n.family()));
    let mut record = MatchRecord::new(given, family, birth_date);
    for id in identifiers {
        record = record.with_identifier(&id.system, &id.value, id.national);
    }
    for phone in &contact.phones {
        record = record.with_phone(phone.number.as_str());
    }
    for email in &contact.emails {
        record = record.with_email(email.address.as_str());
    }
    if let Some(address) = contact.addresses.iter().find(|a| a.preferred) {
        record = record.with_address(
            &address.lines,
            address.city.as_deref().unwrap_or_default(),
            address.postal_code.as_deref().unwrap_or_default(),
            address.state.as_deref().unwrap_or_default(),
        );
    }
    record
}

/// Why a registration was not stored.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The matcher finds the person `certain`ly or `probable` registered already, and no
    /// override reason was given.
    #[error("the patient may be registered already")]
    PossibleDuplicate(Vec<Match>),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("the match read model could not be read")]
    Database(#[from] sqlx::Error),
}

/// Registers `input` as patient `id`, unless the matcher finds them `certain`ly or
/// `probable` registered already (in the match read model, or among the registrations it
/// does not know yet: [`event_store::registration_guard`]) and the caller gave no override
/// reason. `pool` holds the match read model.
///
/// # Errors
///
/// [`RegistrationError::PossibleDuplicate`] with the candidates, or the command's error.
pub async fn register(
    (store, pool): (&PatientStore, &PgPool),
    id: PatientId,
    input: Registration,
    metadata: CommandMetadata,
    now: DateTime<Utc>,
) -> Result<(Patient, u64), RegistrationError> {
    let record = input.match_record();
    // A reason lets the registration pass likely duplicates the read model does not know yet
    // too.
    let may_pass = input.duplicate_override.is_some();
    let likely: Vec<Match> = matching::find_matches(pool, &record)
        .await?
        .into_iter()
        .filter(|m| m.grade.blocks_registration())
        .collect();
    let duplicate_override = match (likely.is_empty(), input.duplicate_override) {
        (true, _) => None,
        (false, Some(reason)) => Some(DuplicateOverride {
            reason,
            candidates: likely.iter().map(|m| PatientId::new(m.id)).collect(),
        }),
        (false, None) => return Err(RegistrationError::PossibleDuplicate(likely)),
    };
    let overridden = duplicate_override.is_some();
    let mrn = store.next_mrn().await?;
    let command = PatientCommand::Register(RegisterPatient {
        patient_id: id,
        mrn,
        name: input.name,
        birth_date: input.birth_date,
        gender: input.gender,
        marital_status: input.marital_status,
        languages: input.languages,
        identifiers: input.identifiers,
        contact: input.contact,
        duplicate_override,
        at: now,
    });
    let registered = store
        .register(id, command, (record, may_pass), metadata, now)
        .await?;
    tracing::info!(patient_id = %id, overridden, "patient registered");
    Ok(registered)
}
