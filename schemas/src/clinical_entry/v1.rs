//! Version 1 of the clinical entry events as published: observations (laboratory results,
//! vital signs), procedures and encounters. Keyed by patient id, like every patient event; the
//! `ce_subject` is the entry's own id (each entry is a stream of its own).
//!
//! Each kind has three event types, shaped as the medical record's: `{Kind}Recorded`,
//! `{Kind}Revised` (the whole item as it now is, with the reason) and `{Kind}EnteredInError`.
//! Codes are FHIR R4's; instants RFC 3339 in UTC; measured values decimals as written, with
//! their UCUM unit.
//!
//! `Debug` of every type here prints ids only: the data is clinical data.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::medical_record::v1::{item_events, Concept, EnteredInError, Recorded, Revised};
use crate::DecodeError;

pub const MAJOR: u32 = 1;

/// A measured value: a decimal as written (`-2.5`, `0`, `120`) and its UCUM unit.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Measurement {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// What an observation found, by `type`: `quantity`, `text`, `coded` or `range`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ObservationValue {
    Quantity(Measurement),
    Text {
        text: String,
    },
    Coded(Concept),
    Range {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        low: Option<Measurement>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        high: Option<Measurement>,
    },
}

/// The values a result is judged against.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferenceRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<Measurement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<Measurement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One part of an observation measured with others (a blood pressure's systolic).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObservationComponent {
    pub code: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ObservationValue>,
}

/// A laboratory result, vital sign or other measurement (FHIR Observation), coded in LOINC.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Observation {
    pub code: Concept,
    /// `vital-signs`, `laboratory`, `social-history`, `survey`, `exam`, `imaging`,
    /// `procedure`, `therapy` or `activity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["vital-signs", "laboratory", "social-history", "survey", "exam", "imaging", "procedure", "therapy", "activity", null]))]
    pub category: Option<String>,
    /// `registered`, `preliminary`, `final`, `amended`, `corrected`, `cancelled` or `unknown`.
    #[schemars(extend("enum" = ["registered", "preliminary", "final", "amended", "corrected", "cancelled", "unknown"]))]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ObservationValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ObservationComponent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpretation: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<ReferenceRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A procedure performed (FHIR Procedure), coded in SNOMED CT or CPT.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Procedure {
    pub code: Concept,
    /// `preparation`, `in-progress`, `not-done`, `on-hold`, `stopped`, `completed` or
    /// `unknown`.
    #[schemars(extend("enum" = ["preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "unknown"]))]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performed_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performed_end: Option<DateTime<Utc>>,
    /// The performer's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A contact between the patient and care (FHIR Encounter).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Encounter {
    /// `planned`, `arrived`, `triaged`, `in-progress`, `onleave`, `finished`, `cancelled` or
    /// `unknown`.
    #[schemars(extend("enum" = ["planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "unknown"]))]
    pub status: String,
    /// HL7 v3 ActEncounterCode: `AMB`, `EMER`, `IMP`, `SS`, `HH`, `VR`, `FLD`, `PRENC` or
    /// `OBSENC`.
    #[schemars(extend("enum" = ["AMB", "EMER", "IMP", "SS", "HH", "VR", "FLD", "PRENC", "OBSENC"]))]
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter_type: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// The practitioner's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Concept>,
    /// The appointment it fulfilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
    Measurement,
    ObservationValue,
    ReferenceRange,
    ObservationComponent,
    Observation,
    Procedure,
    Encounter
);

item_events!(ClinicalEntryEvent, "clinical-entry/v1/";
    ObservationRecorded(Recorded<Observation>),
    ObservationRevised(Revised<Observation>),
    ObservationEnteredInError(EnteredInError),
    ProcedureRecorded(Recorded<Procedure>),
    ProcedureRevised(Revised<Procedure>),
    ProcedureEnteredInError(EnteredInError),
    EncounterRecorded(Recorded<Encounter>),
    EncounterRevised(Revised<Encounter>),
    EncounterEnteredInError(EnteredInError),
);

impl ClinicalEntryEvent {
    /// Builds the event of `event_type` from its JSON (patient, item and the item, revision or
    /// error mark, as the event type decides).
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
