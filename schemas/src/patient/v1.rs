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
    /// Titles before the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<String>,
    /// Parts after the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suffix: Vec<String>,
    /// The name the patient wants to be called by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<String>,
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
    #[schemars(extend("enum" = ["home", "work", "mobile"]))]
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
    #[schemars(extend("enum" = ["home", "work", "temp", "billing"]))]
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
    /// HL7 v3 MaritalStatus code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["A", "D", "I", "L", "M", "C", "P", "T", "U", "S", "W", "UNK", null]))]
    pub marital_status: Option<String>,
    /// BCP 47 language tags, most preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
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
    /// HL7 v3 MaritalStatus code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["A", "D", "I", "L", "M", "C", "P", "T", "U", "S", "W", "UNK", null]))]
    pub marital_status: Option<String>,
    /// BCP 47 language tags, most preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
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

/// `ContactInformationChanged`: phones, e-mail addresses and postal addresses, in full after
/// the change.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContactInformationChanged {
    pub patient_id: Uuid,
    pub contact: ContactInformation,
    pub changed_at: DateTime<Utc>,
}

/// `IdentifierAdded`: an identifier issued by another system was recorded.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IdentifierAdded {
    pub patient_id: Uuid,
    pub identifier: Identifier,
    pub added_at: DateTime<Utc>,
}

/// `IdentifierRemoved`: an identifier was removed, with the reason.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IdentifierRemoved {
    pub patient_id: Uuid,
    pub identifier: Identifier,
    pub reason: String,
    pub removed_at: DateTime<Utc>,
}

/// When not to contact the patient, local time `HH:MM`; may wrap midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

/// How the patient wants to be communicated with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Preferences {
    /// BCP 47 language tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication_language: Option<String>,
    /// `sms`, `email`, `phone` or `post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["sms", "email", "phone", "post", null]))]
    pub preferred_channel: Option<String>,
    pub reminder_opt_in: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    pub interpreter_needed: bool,
}

/// `PreferencesUpdated`: the preferences in full after the update.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreferencesUpdated {
    pub patient_id: Uuid,
    pub preferences: Preferences,
    pub updated_at: DateTime<Utc>,
}

/// Someone to call in an emergency.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyContact {
    pub contact_id: Uuid,
    pub name: HumanName,
    /// `spouse`, `partner`, `parent`, `child`, `sibling`, `relative`, `friend`, `guardian`,
    /// `caregiver` or `other`.
    #[schemars(extend("enum" = ["spouse", "partner", "parent", "child", "sibling", "relative", "friend", "guardian", "caregiver", "other"]))]
    pub relationship: String,
    pub phones: Vec<Phone>,
}

/// `EmergencyContactAdded`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyContactAdded {
    pub patient_id: Uuid,
    pub contact: EmergencyContact,
    pub added_at: DateTime<Utc>,
}

/// `EmergencyContactChanged`: the contact in full after the change.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyContactChanged {
    pub patient_id: Uuid,
    pub contact: EmergencyContact,
    pub changed_at: DateTime<Utc>,
}

/// `EmergencyContactRemoved`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyContactRemoved {
    pub patient_id: Uuid,
    pub contact_id: Uuid,
    pub removed_at: DateTime<Utc>,
}

/// An insurance coverage.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Coverage {
    pub coverage_id: Uuid,
    pub payer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub member_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The subscriber, when not the patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_name: Option<HumanName>,
    /// The patient to the subscriber: `self`, `spouse`, `child` or `other`.
    #[schemars(extend("enum" = ["self", "spouse", "child", "other"]))]
    pub relationship: String,
    pub start: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<NaiveDate>,
    /// `primary`, `secondary` or `tertiary`.
    #[schemars(extend("enum" = ["primary", "secondary", "tertiary"]))]
    pub priority: String,
}

/// `CoverageAdded`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CoverageAdded {
    pub patient_id: Uuid,
    pub coverage: Coverage,
    pub added_at: DateTime<Utc>,
}

/// `CoverageChanged`: the coverage in full after the change.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CoverageChanged {
    pub patient_id: Uuid,
    pub coverage: Coverage,
    pub changed_at: DateTime<Utc>,
}

/// `CoverageEnded`: the coverage ends on `end`; it stays on record.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CoverageEnded {
    pub patient_id: Uuid,
    pub coverage_id: Uuid,
    pub end: NaiveDate,
    pub reason: String,
    pub ended_at: DateTime<Utc>,
}

/// `PatientMerged`: this patient was a duplicate of `target_id`, the survivor; it is inactive
/// and points there.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientMerged {
    pub patient_id: Uuid,
    pub target_id: Uuid,
    pub reason: String,
    pub merged_at: DateTime<Utc>,
}

/// `PatientAbsorbed`: this patient survived a merge of `source_id` and gained the
/// identifiers and contact points it lacked.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientAbsorbed {
    pub patient_id: Uuid,
    pub source_id: Uuid,
    pub gained_identifiers: Vec<Identifier>,
    pub gained_contact: ContactInformation,
    pub reason: String,
    pub absorbed_at: DateTime<Utc>,
}

/// `PatientUnmerged`: the merge of this patient was undone.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientUnmerged {
    pub patient_id: Uuid,
    pub target_id: Uuid,
    /// `active` or `archived`: the status before the merge.
    #[schemars(extend("enum" = ["active", "archived"]))]
    pub status: String,
    pub reason: String,
    pub unmerged_at: DateTime<Utc>,
}

/// `AbsorptionReverted`: what this patient gained from `source_id` was given back.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AbsorptionReverted {
    pub patient_id: Uuid,
    pub source_id: Uuid,
    pub removed_identifiers: Vec<Identifier>,
    pub removed_contact: ContactInformation,
    pub reason: String,
    pub reverted_at: DateTime<Utc>,
}

/// `CareRelationshipStarted`: a practitioner (a user id) now cares for the patient and may read
/// their record.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CareRelationshipStarted {
    pub patient_id: Uuid,
    pub practitioner: String,
    /// `attending`, `primary-care`, `consulting` or `nursing`.
    #[schemars(extend("enum" = ["attending", "primary-care", "consulting", "nursing"]))]
    pub role: String,
    pub started_at: DateTime<Utc>,
}

/// `CareRelationshipEnded`: the practitioner no longer cares for the patient.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CareRelationshipEnded {
    pub patient_id: Uuid,
    pub practitioner: String,
    pub reason: String,
    pub ended_at: DateTime<Utc>,
}

/// What a consent directive allows beyond the default policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ConsentDirective {
    /// Users of this organization may read the record.
    ShareWithOrganization { organization: String },
    /// Every user with this role may read the record without a care relationship.
    ShareWithRole { role: String },
    /// The record must not be used for research.
    ResearchOptOut,
}

/// `ConsentGranted`: the patient gave a consent directive.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConsentGranted {
    pub patient_id: Uuid,
    pub consent_id: Uuid,
    pub directive: ConsentDirective,
    pub granted_at: DateTime<Utc>,
}

/// `ConsentWithdrawn`: a consent directive no longer applies.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConsentWithdrawn {
    pub patient_id: Uuid,
    pub consent_id: Uuid,
    pub reason: String,
    pub withdrawn_at: DateTime<Utc>,
}

/// `LegalHoldPlaced`: the record may not be erased until the hold is released.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LegalHoldPlaced {
    pub patient_id: Uuid,
    pub reason: String,
    pub placed_at: DateTime<Utc>,
}

/// `LegalHoldReleased`: the legal hold ended.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LegalHoldReleased {
    pub patient_id: Uuid,
    pub reason: String,
    pub released_at: DateTime<Utc>,
}

/// `PatientForgotten`: the patient's data was erased. Their data key is destroyed, so every
/// earlier event of theirs, on this topic and in the store, can no longer be opened. Published
/// in the clear; consumers delete what they hold of the patient.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PatientForgotten {
    pub patient_id: Uuid,
    /// `patient-request`, `retention-expired`, `legal-order` or `registered-in-error`.
    #[schemars(extend("enum" = ["patient-request", "retention-expired", "legal-order", "registered-in-error"]))]
    pub reason: String,
    /// A ticket or case number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub forgotten_at: DateTime<Utc>,
}

macro_rules! patient_events {
    ($($variant:ident($t:ident)),+ $(,)?) => {
        /// Any v1 patient event, tagged by its event type (the `ce_type` header, not the JSON).
        #[derive(Clone, PartialEq)]
        pub enum PatientEvent {
            $($variant($t)),+
        }

        debug_ids_only!($($t),+);

        impl PatientEvent {
            /// The stable event type string, as in `ce_type`.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($t)),+
                }
            }

            pub fn patient_id(&self) -> Uuid {
                match self {
                    $(Self::$variant(e) => e.patient_id),+
                }
            }

            /// The JSON data of this event, as published.
            pub fn to_json(&self) -> Vec<u8> {
                // Serializing these plain structs cannot fail: no maps with non-string keys,
                // no fallible Serialize impls.
                let result = match self {
                    $(Self::$variant(e) => serde_json::to_vec(e)),+
                };
                result.unwrap_or_default()
            }

            /// Decodes a received event of this major version.
            ///
            /// # Errors
            ///
            /// [`DecodeError::UnknownType`] for another major version or an unknown type,
            /// [`DecodeError::MalformedData`] when the data does not match the type's schema.
            pub fn from_published(event: &crate::PublishedEvent) -> Result<Self, DecodeError> {
                if event.major_version != MAJOR {
                    return Err(DecodeError::UnknownType(format!(
                        "{} v{}",
                        event.event_type, event.major_version
                    )));
                }
                Self::decode(&event.event_type, &event.data)
            }

            /// Decodes the data of an event of `event_type`.
            ///
            /// # Errors
            ///
            /// [`DecodeError::UnknownType`] for a type this version does not know,
            /// [`DecodeError::MalformedData`] when the data does not match the type's schema.
            pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, DecodeError> {
                match event_type {
                    $(stringify!($t) => serde_json::from_slice(data)
                        .map(Self::$variant)
                        .map_err(|_| DecodeError::MalformedData(event_type.to_owned())),)+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }
        }

        impl std::fmt::Debug for PatientEvent {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $(Self::$variant(e) => e.fmt(f)),+
                }
            }
        }

        /// The JSON Schema of each v1 event type, with its path under `json/`.
        pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
            vec![
                $((concat!("patient/v1/", stringify!($t), ".schema.json"), schemars::schema_for!($t))),+
            ]
        }
    };
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

patient_events!(
    Registered(PatientRegistered),
    DemographicsCorrected(DemographicsCorrected),
    Archived(PatientArchived),
    Restored(PatientRestored),
    ContactInformationChanged(ContactInformationChanged),
    IdentifierAdded(IdentifierAdded),
    IdentifierRemoved(IdentifierRemoved),
    PreferencesUpdated(PreferencesUpdated),
    EmergencyContactAdded(EmergencyContactAdded),
    EmergencyContactChanged(EmergencyContactChanged),
    EmergencyContactRemoved(EmergencyContactRemoved),
    CoverageAdded(CoverageAdded),
    CoverageChanged(CoverageChanged),
    CoverageEnded(CoverageEnded),
    Merged(PatientMerged),
    Absorbed(PatientAbsorbed),
    Unmerged(PatientUnmerged),
    AbsorptionReverted(AbsorptionReverted),
    CareRelationshipStarted(CareRelationshipStarted),
    CareRelationshipEnded(CareRelationshipEnded),
    ConsentGranted(ConsentGranted),
    ConsentWithdrawn(ConsentWithdrawn),
    LegalHoldPlaced(LegalHoldPlaced),
    LegalHoldReleased(LegalHoldReleased),
    Forgotten(PatientForgotten),
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
    HumanName,
    Identifier,
    Phone,
    Email,
    Address,
    ContactInformation,
    DuplicateOverride,
    EmergencyContact,
    Coverage
);
