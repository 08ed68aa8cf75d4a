//! Version 1 of the patient events as published. Field names are `snake_case`, dates are ISO
//! 8601 (`YYYY-MM-DD`), instants RFC 3339 in UTC, codes lowercase FHIR codes.
//!
//! `Debug` of every type here prints ids only: the data is patient data.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DecodeError;

pub const MAJOR: u32 = 1;

/// A person's name: given names in order, then the family name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HumanName {
    /// Given names in order; empty for a person known by one name (then the family name).
    pub given: Vec<String>,
    pub family: String,
}

/// An identifier issued by another system.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Identifier {
    /// URI or OID URN of the issuing system.
    pub system: String,
    pub value: String,
    /// A national identifier (e.g. a social security number).
    #[serde(default)]
    pub national: bool,
}

/// A phone number in E.164 form.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Phone {
    pub number: String,
    /// `home`, `work` or `mobile`.
    #[serde(rename = "use")]
    pub phone_use: String,
    pub preferred: bool,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Email {
    pub address: String,
    pub preferred: bool,
}

/// A postal address.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    /// `home`, `work`, `temp` or `billing`.
    #[serde(rename = "use")]
    pub address_use: String,
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub preferred: bool,
}

/// Phones, e-mail addresses and postal addresses; each list has exactly one preferred entry
/// when it is not empty.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactInformation {
    #[serde(default)]
    pub phones: Vec<Phone>,
    #[serde(default)]
    pub emails: Vec<Email>,
    #[serde(default)]
    pub addresses: Vec<Address>,
}

/// Why a likely duplicate was registered anyway, and of whom.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DuplicateOverride {
    pub reason: String,
    pub candidates: Vec<Uuid>,
}

/// FHIR administrative gender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdministrativeGender {
    Male,
    Female,
    Other,
    Unknown,
}

/// `PatientRegistered`: a patient was registered and given an MRN.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientRegistered {
    pub patient_id: Uuid,
    /// Medical record number: ten digits, the last a Luhn check digit.
    pub mrn: String,
    pub name: HumanName,
    /// Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    pub gender: AdministrativeGender,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    #[serde(default)]
    pub contact: ContactInformation,
    /// Present when the patient was registered despite a likely duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_override: Option<DuplicateOverride>,
    pub registered_at: DateTime<Utc>,
}

/// `DemographicsCorrected`: the demographics were corrected; carries all of them after the
/// correction.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DemographicsCorrected {
    pub patient_id: Uuid,
    pub name: HumanName,
    /// Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    pub gender: AdministrativeGender,
    /// Why the correction was made.
    pub reason: String,
    pub corrected_at: DateTime<Utc>,
}

/// `PatientArchived`: the record was archived; it leaves default search.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientArchived {
    pub patient_id: Uuid,
    pub reason: String,
    pub archived_at: DateTime<Utc>,
}

/// `PatientRestored`: an archived record was made active again.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientRestored {
    pub patient_id: Uuid,
    pub reason: String,
    pub restored_at: DateTime<Utc>,
}

/// Any v1 patient event, tagged by its event type (the `ce_type` header, not the JSON).
#[derive(Clone, PartialEq)]
pub enum PatientEvent {
    Registered(PatientRegistered),
    DemographicsCorrected(DemographicsCorrected),
    Archived(PatientArchived),
    Restored(PatientRestored),
}

macro_rules! debug_ids_only {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("patient_id", &self.patient_id)
                    .finish_non_exhaustive()
            }
        }
    )*};
}
debug_ids_only!(
    PatientRegistered,
    DemographicsCorrected,
    PatientArchived,
    PatientRestored
);

macro_rules! redacted {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}
redacted!(
    Identifier,
    Phone,
    Email,
    Address,
    ContactInformation,
    DuplicateOverride
);

impl std::fmt::Debug for HumanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HumanName(<redacted>)")
    }
}

impl std::fmt::Debug for PatientEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registered(e) => e.fmt(f),
            Self::DemographicsCorrected(e) => e.fmt(f),
            Self::Archived(e) => e.fmt(f),
            Self::Restored(e) => e.fmt(f),
        }
    }
}

impl PatientEvent {
    /// The stable event type string, as in `ce_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Registered(_) => "PatientRegistered",
            Self::DemographicsCorrected(_) => "DemographicsCorrected",
            Self::Archived(_) => "PatientArchived",
            Self::Restored(_) => "PatientRestored",
        }
    }

    pub fn patient_id(&self) -> Uuid {
        match self {
            Self::Registered(e) => e.patient_id,
            Self::DemographicsCorrected(e) => e.patient_id,
            Self::Archived(e) => e.patient_id,
            Self::Restored(e) => e.patient_id,
        }
    }

    /// The JSON data of this event, as published.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible Serialize impls.
        let result = match self {
            Self::Registered(e) => serde_json::to_vec(e),
            Self::DemographicsCorrected(e) => serde_json::to_vec(e),
            Self::Archived(e) => serde_json::to_vec(e),
            Self::Restored(e) => serde_json::to_vec(e),
        };
        result.unwrap_or_default()
    }

    /// Decodes the data of an event of `event_type`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownType`] for a type this version does not know,
    /// [`DecodeError::MalformedData`] when the data does not match the type's schema.
    pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, DecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(t: &str, data: &[u8]) -> Result<T, DecodeError> {
            serde_json::from_slice(data).map_err(|_| DecodeError::MalformedData(t.to_owned()))
        }
        Ok(match event_type {
            "PatientRegistered" => Self::Registered(parse(event_type, data)?),
            "DemographicsCorrected" => Self::DemographicsCorrected(parse(event_type, data)?),
            "PatientArchived" => Self::Archived(parse(event_type, data)?),
            "PatientRestored" => Self::Restored(parse(event_type, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// The JSON Schema of each v1 event type, with its path under `json/`.
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "patient/v1/PatientRegistered.schema.json",
            schemars::schema_for!(PatientRegistered),
        ),
        (
            "patient/v1/DemographicsCorrected.schema.json",
            schemars::schema_for!(DemographicsCorrected),
        ),
        (
            "patient/v1/PatientArchived.schema.json",
            schemars::schema_for!(PatientArchived),
        ),
        (
            "patient/v1/PatientRestored.schema.json",
            schemars::schema_for!(PatientRestored),
        ),
    ]
}
