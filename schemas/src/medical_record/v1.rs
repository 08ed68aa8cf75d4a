//! Version 1 of the medical record events as published, keyed by patient id (the `ce_subject`
//! is the patient id too: a patient has one medical record). Field names are `snake_case`,
//! dates ISO 8601, instants RFC 3339 in UTC, codes lowercase FHIR codes.
//!
//! Each kind of item has three event types: `{Kind}Recorded`, `{Kind}Revised` (the whole item
//! as it now is, with the reason) and `{Kind}EnteredInError`. The kinds are `Allergy`,
//! `Medication`, `Immunization`, `Problem`, `HistoryEntry` and `Document`. A document's bytes
//! are not in the event: fetch them by item id from the API.
//!
//! `Debug` of every type here prints ids only: the data is clinical data.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DecodeError;

pub const MAJOR: u32 = 1;

/// A clinical concept: human-readable text and, optionally, one code of a code system.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Concept {
    /// The code system's URI, e.g. `http://snomed.info/sct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// How the code system displays the code, as the source gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    pub text: String,
}

/// A reaction to an allergen.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reaction {
    pub manifestation: Concept,
    /// `mild`, `moderate` or `severe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["mild", "moderate", "severe", null]))]
    pub severity: Option<String>,
}

/// An allergy or intolerance (FHIR AllergyIntolerance).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Allergy {
    pub substance: Concept,
    /// `food`, `medication`, `environment` or `biologic`; absent when the source did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["food", "medication", "environment", "biologic", null]))]
    pub category: Option<String>,
    /// `low`, `high` or `unable-to-assess`; absent when the source did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["low", "high", "unable-to-assess", null]))]
    pub criticality: Option<String>,
    #[serde(default)]
    pub reactions: Vec<Reaction>,
    /// `active`, `inactive` or `resolved`.
    #[schemars(extend("enum" = ["active", "inactive", "resolved"]))]
    pub clinical_status: String,
    /// `unconfirmed`, `presumed`, `confirmed` or `refuted`; absent when the source did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["unconfirmed", "presumed", "confirmed", "refuted", null]))]
    pub verification_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An amount: a positive decimal as written, and its UCUM unit.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quantity {
    pub value: String,
    pub unit: String,
}

/// `count` times per `period` `period_unit` (`h`, `d`, `wk` or `mo`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Frequency {
    pub count: u32,
    pub period: u32,
    #[schemars(extend("enum" = ["h", "d", "wk", "mo"]))]
    pub period_unit: String,
    #[serde(default)]
    pub as_needed: bool,
}

/// A medication taken, prescribed or reported (FHIR MedicationStatement), with what is known of
/// it: only the medication, its status and its source are always there.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Medication {
    pub medication: Concept,
    /// `order` (prescribed here), `patient-reported` or `other-record`. Events written before
    /// the field existed have none: they were all orders.
    #[serde(default = "order")]
    #[schemars(extend("enum" = ["order", "patient-reported", "other-record"]))]
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dose: Option<Quantity>,
    /// `oral`, `intravenous`, `intramuscular`, `subcutaneous`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["oral", "sublingual", "intravenous", "intramuscular", "subcutaneous", "intradermal", "topical", "transdermal", "inhalation", "intranasal", "rectal", "vaginal", "ophthalmic", "otic", null]))]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Frequency>,
    /// Taken as needed with no schedule; with a schedule, `frequency.as_needed` says it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_needed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<NaiveDate>,
    /// `active`, `on-hold`, `intended`, `stopped`, `completed`, `not-taken` or `unknown`.
    #[schemars(extend("enum" = ["active", "on-hold", "intended", "stopped", "completed", "not-taken", "unknown"]))]
    pub status: String,
    /// The prescriber's user id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prescriber: Option<String>,
    /// Why it is taken: the condition treated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_for_use: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn order() -> String {
    "order".to_owned()
}

/// A vaccine given or recorded as not given; the vaccine coded in CVX.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Immunization {
    pub vaccine: Concept,
    pub occurred_on: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["left-arm", "right-arm", "left-thigh", "right-thigh", "left-gluteus", "right-gluteus", "nose", "mouth", null]))]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["oral", "sublingual", "intravenous", "intramuscular", "subcutaneous", "intradermal", "topical", "transdermal", "inhalation", "intranasal", "rectal", "vaginal", "ophthalmic", "otic", null]))]
    pub route: Option<String>,
    /// The user id of who gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer: Option<String>,
    /// `completed` or `not-done`.
    #[schemars(extend("enum" = ["completed", "not-done"]))]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A problem-list entry (FHIR Condition), coded in ICD-10 or SNOMED CT.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    pub condition: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abatement: Option<NaiveDate>,
    /// `active`, `recurrence`, `relapse`, `inactive`, `remission` or `resolved`.
    #[schemars(extend("enum" = ["active", "recurrence", "relapse", "inactive", "remission", "resolved"]))]
    pub clinical_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["mild", "moderate", "severe", null]))]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A health-history entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    /// `past-medical`, `surgical`, `family` or `social`.
    #[schemars(extend("enum" = ["past-medical", "surgical", "family", "social"]))]
    pub category: String,
    pub description: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_on: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a document's bytes are. The bytes themselves are fetched from the API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentContent {
    pub media_type: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    #[serde(default)]
    pub text_length: u64,
}

/// A document (FHIR DocumentReference).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Document {
    pub title: String,
    pub document_type: Concept,
    /// The author's user id.
    pub author: String,
    pub date: NaiveDate,
    pub content: DocumentContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An allergy warning a prescriber saw and overrode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AcknowledgedWarning {
    pub allergy_id: Uuid,
    /// The allergy's version the warning was for; a later version raises it again.
    #[serde(default)]
    pub allergy_version: u32,
    pub acknowledged_by: String,
}

/// `{Kind}Recorded`: an item was added to the record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recorded<T> {
    pub patient_id: Uuid,
    pub item_id: Uuid,
    pub item: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Medications only: the allergy warnings acknowledged when it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_warnings: Vec<AcknowledgedWarning>,
    pub recorded_at: DateTime<Utc>,
}

/// `{Kind}Revised`: the item as it now is, and why it changed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Revised<T> {
    pub patient_id: Uuid,
    pub item_id: Uuid,
    pub item: T,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_warnings: Vec<AcknowledgedWarning>,
    pub revised_at: DateTime<Utc>,
}

/// `{Kind}EnteredInError`: the item was a mistake. It stays on the record, marked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnteredInError {
    pub patient_id: Uuid,
    pub item_id: Uuid,
    /// `allergy`, `medication`, `immunization`, `problem`, `history` or `document` on the
    /// medical record's topic; `observation`, `procedure` or `encounter` on the clinical
    /// entries'.
    #[schemars(extend("enum" = ["allergy", "medication", "immunization", "problem", "history", "document", "observation", "procedure", "encounter"]))]
    pub kind: String,
    pub reason: String,
    pub entered_at: DateTime<Utc>,
}

impl<T> std::fmt::Debug for Recorded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("patient_id", &self.patient_id)
            .field("item_id", &self.item_id)
            .finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Revised<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revised")
            .field("patient_id", &self.patient_id)
            .field("item_id", &self.item_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EnteredInError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnteredInError")
            .field("patient_id", &self.patient_id)
            .field("item_id", &self.item_id)
            .finish_non_exhaustive()
    }
}

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
    Concept,
    Reaction,
    Allergy,
    Quantity,
    Frequency,
    Medication,
    Immunization,
    Problem,
    HistoryEntry,
    DocumentContent,
    Document
);

/// The events of a topic of clinical items (this one, and the clinical entries'): the enum
/// `$name` of every event type, its decoding and the JSON Schema of each under `$path`.
macro_rules! item_events {
    ($name:ident, $path:literal; $($variant:ident($t:ty)),+ $(,)?) => {
        /// Any v1 event of the topic, tagged by its event type (`ce_type`).
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $($variant($t)),+
        }

        /// Every v1 event type.
        pub const EVENT_TYPES: &[&str] = &[$(stringify!($variant)),+];

        impl $name {
            /// The stable event type string, as in `ce_type`.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant)),+
                }
            }

            pub fn patient_id(&self) -> Uuid {
                match self {
                    $(Self::$variant(e) => e.patient_id),+
                }
            }

            pub fn item_id(&self) -> Uuid {
                match self {
                    $(Self::$variant(e) => e.item_id),+
                }
            }

            /// The JSON data of this event, as published.
            pub fn to_json(&self) -> Vec<u8> {
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
            /// As [`Self::from_published`].
            pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, DecodeError> {
                match event_type {
                    $(stringify!($variant) => serde_json::from_slice(data)
                        .map(Self::$variant)
                        .map_err(|_| DecodeError::MalformedData(event_type.to_owned())),)+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }
        }

        /// The JSON Schema of each v1 event type, with its path under `json/`.
        pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
            vec![
                $((concat!($path, stringify!($variant), ".schema.json"), schemars::schema_for!($t))),+
            ]
        }
    };
}

pub(crate) use item_events;

item_events!(MedicalRecordEvent, "medical-record/v1/";
    AllergyRecorded(Recorded<Allergy>),
    AllergyRevised(Revised<Allergy>),
    AllergyEnteredInError(EnteredInError),
    MedicationRecorded(Recorded<Medication>),
    MedicationRevised(Revised<Medication>),
    MedicationEnteredInError(EnteredInError),
    ImmunizationRecorded(Recorded<Immunization>),
    ImmunizationRevised(Revised<Immunization>),
    ImmunizationEnteredInError(EnteredInError),
    ProblemRecorded(Recorded<Problem>),
    ProblemRevised(Revised<Problem>),
    ProblemEnteredInError(EnteredInError),
    HistoryEntryRecorded(Recorded<HistoryEntry>),
    HistoryEntryRevised(Revised<HistoryEntry>),
    HistoryEntryEnteredInError(EnteredInError),
    DocumentRecorded(Recorded<Document>),
    DocumentRevised(Revised<Document>),
    DocumentEnteredInError(EnteredInError),
);

impl MedicalRecordEvent {
    /// Builds the event of `event_type` from the patient, item and JSON of an item, revision
    /// or error mark, the shape of which the event type decides.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the type is unknown or the JSON does not fit it.
    pub fn from_value(event_type: &str, value: serde_json::Value) -> Result<Self, DecodeError> {
        let bytes = serde_json::to_vec(&value)
            .map_err(|_| DecodeError::MalformedData(event_type.to_owned()))?;
        Self::decode(event_type, &bytes)
    }
}
