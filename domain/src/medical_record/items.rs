//! The kinds of clinical item a medical record holds, after FHIR R4's AllergyIntolerance,
//! MedicationStatement, Immunization, Condition, and DocumentReference, simplified to what
//! the service checks and searches.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::values::{Concept, Frequency, Label, Measurement, Note, Quantity};
use crate::patient::governance::Principal;

crate::code_enum!(
    /// The kind of an item, as named in paths (`/allergies`) and events.
    ItemKind {
        Allergy = "allergy",
        Medication = "medication",
        Immunization = "immunization",
        Problem = "problem",
        History = "history",
        Document = "document",
        Observation = "observation",
        Procedure = "procedure",
        Encounter = "encounter",
    }
);

impl ItemKind {
    /// Whether items of this kind live in a stream of their own (a [`super::ClinicalEntry`])
    /// rather than in the patient's [`super::MedicalRecord`]: they take part in no rule
    /// between items, so a chart of thousands of them never slows the record's decisions.
    pub fn has_own_stream(&self) -> bool {
        matches!(self, Self::Observation | Self::Procedure | Self::Encounter)
    }
}

crate::code_enum!(
    AllergyCategory { Food = "food", Medication = "medication", Environment = "environment", Biologic = "biologic" }
);
crate::code_enum!(
    AllergyCriticality { Low = "low", High = "high", UnableToAssess = "unable-to-assess" }
);
crate::code_enum!(
    AllergyClinicalStatus { Active = "active", Inactive = "inactive", Resolved = "resolved" }
);
crate::code_enum!(
    VerificationStatus {
        Unconfirmed = "unconfirmed",
        Presumed = "presumed",
        Confirmed = "confirmed",
        Refuted = "refuted",
    }
);
crate::code_enum!(
    Severity { Mild = "mild", Moderate = "moderate", Severe = "severe" }
);

/// One reaction to an allergen: what happened and how bad it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reaction {
    pub manifestation: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
}

/// An allergy or intolerance. As in FHIR's AllergyIntolerance, only what it is to and whether
/// it stands are required: many sources know neither its category nor its criticality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Allergy {
    pub substance: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<AllergyCategory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<AllergyCriticality>,
    #[serde(default)]
    pub reactions: Vec<Reaction>,
    pub clinical_status: AllergyClinicalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_status: Option<VerificationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

impl Allergy {
    /// Whether the allergy stands: active and not refuted.
    pub fn is_active(&self) -> bool {
        self.clinical_status == AllergyClinicalStatus::Active
            && self.verification_status != Some(VerificationStatus::Refuted)
    }
}

crate::code_enum!(
    /// FHIR MedicationStatement's statuses but `entered-in-error`, which is the item's own
    /// lifecycle here.
    MedicationStatus {
        Active = "active",
        OnHold = "on-hold",
        Intended = "intended",
        Stopped = "stopped",
        Completed = "completed",
        NotTaken = "not-taken",
        Unknown = "unknown",
    }
);
crate::code_enum!(
    /// Where what is known of a medication comes from: an `order` of a prescriber here (FHIR
    /// MedicationRequest), the patient's (or a relative's) own account, or another record
    /// (a referral letter, another system's medication list).
    MedicationSource { Order = "order", PatientReported = "patient-reported", OtherRecord = "other-record" }
);
crate::code_enum!(
    /// Routes of administration (SNOMED CT route concepts, by name).
    Route {
        Oral = "oral",
        Sublingual = "sublingual",
        Intravenous = "intravenous",
        Intramuscular = "intramuscular",
        Subcutaneous = "subcutaneous",
        Intradermal = "intradermal",
        Topical = "topical",
        Transdermal = "transdermal",
        Inhalation = "inhalation",
        Intranasal = "intranasal",
        Rectal = "rectal",
        Vaginal = "vaginal",
        Ophthalmic = "ophthalmic",
        Otic = "otic",
    }
);

impl MedicationStatus {
    /// Whether the patient is, will be or may be taking it: what the allergy check guards.
    /// `unknown` counts, for safety.
    pub fn is_current(&self) -> bool {
        matches!(
            self,
            Self::Active | Self::OnHold | Self::Intended | Self::Unknown
        )
    }

    /// Whether it has ended for good: a later revision cannot make it current again.
    pub fn has_ended(&self) -> bool {
        matches!(self, Self::Stopped | Self::Completed)
    }
}

/// A medication the patient takes, took or is to take, with what is known of it. As in FHIR's
/// MedicationStatement, only the medication and its status are required: a list from another
/// system, or what a patient reports, seldom knows the dose, route, frequency or prescriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Medication {
    pub medication: Concept,
    /// `order` for the medications recorded before the source was (they all were orders).
    #[serde(default = "MedicationSource::order")]
    pub source: MedicationSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dose: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Frequency>,
    /// Taken as needed with no schedule (FHIR `asNeededBoolean` without a timing); with a
    /// schedule, the frequency says it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_needed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<NaiveDate>,
    pub status: MedicationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prescriber: Option<Principal>,
    /// Why it is taken: the condition treated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_for_use: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

impl MedicationSource {
    fn order() -> Self {
        Self::Order
    }
}

crate::code_enum!(
    ImmunizationStatus { Completed = "completed", NotDone = "not-done" }
);
crate::code_enum!(
    /// Body sites of an injection (HL7 v3 ActSite, by name).
    BodySite {
        LeftArm = "left-arm",
        RightArm = "right-arm",
        LeftThigh = "left-thigh",
        RightThigh = "right-thigh",
        LeftGluteus = "left-gluteus",
        RightGluteus = "right-gluteus",
        Nose = "nose",
        Mouth = "mouth",
    }
);

/// A vaccine given (or recorded as not given). The vaccine is coded in CVX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Immunization {
    pub vaccine: Concept,
    pub occurred_on: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot_number: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<BodySite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer: Option<Principal>,
    pub status: ImmunizationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

crate::code_enum!(
    ProblemStatus {
        Active = "active",
        Recurrence = "recurrence",
        Relapse = "relapse",
        Inactive = "inactive",
        Remission = "remission",
        Resolved = "resolved",
    }
);

impl ProblemStatus {
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active | Self::Recurrence | Self::Relapse)
    }
}

/// An entry of the problem list, coded in ICD-10 or SNOMED CT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "ProblemListEntry")]
pub struct Problem {
    pub condition: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abatement: Option<NaiveDate>,
    pub clinical_status: ProblemStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

crate::code_enum!(
    HistoryCategory {
        PastMedical = "past-medical",
        Surgical = "surgical",
        Family = "family",
        Social = "social",
    }
);

/// An entry of the health history: past illness, operation, family or social history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    pub category: HistoryCategory,
    pub description: Concept,
    /// For family history: who in the family (`mother`, `maternal grandfather`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_on: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

/// A document on the record. Its content is stored apart, addressed by its SHA-256; so is the
/// text extracted from it for indexing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Document {
    pub title: Label,
    pub document_type: Concept,
    pub author: Principal,
    pub date: NaiveDate,
    pub content: DocumentContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

/// Where a document's bytes are and what they are. Set at upload, never revised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentContent {
    pub media_type: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// SHA-256 of the extracted text (stored beside the bytes), when text was extracted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    /// Characters of text extracted.
    #[serde(default)]
    pub text_length: u64,
}

crate::code_enum!(
    /// FHIR Observation's statuses (`entered-in-error` is the item's own lifecycle here).
    ObservationStatus {
        Registered = "registered",
        Preliminary = "preliminary",
        Final = "final",
        Amended = "amended",
        Corrected = "corrected",
        Cancelled = "cancelled",
        Unknown = "unknown",
    }
);
crate::code_enum!(
    /// FHIR's observation categories.
    ObservationCategory {
        VitalSigns = "vital-signs",
        Laboratory = "laboratory",
        SocialHistory = "social-history",
        Survey = "survey",
        Exam = "exam",
        Imaging = "imaging",
        Procedure = "procedure",
        Therapy = "therapy",
        Activity = "activity",
    }
);

/// What an observation found: a measured quantity (UCUM unit), text, a coded answer, or a
/// range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ObservationValue {
    Quantity(Measurement),
    Text {
        text: Note,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferenceRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<Measurement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<Measurement>,
    /// In words: `normal for age`, or a laboratory's table of ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Note>,
}

/// One part of an observation measured together with others (a blood pressure's systolic and
/// diastolic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObservationComponent {
    pub code: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ObservationValue>,
}

/// A laboratory result, vital sign or other measurement (FHIR Observation), coded in LOINC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Observation {
    pub code: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<ObservationCategory>,
    pub status: ObservationStatus,
    /// When it was observed (taken, for a specimen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ObservationValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ObservationComponent>,
    /// High, low, normal, abnormal... (HL7 v3 ObservationInterpretation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpretation: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<ReferenceRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

crate::code_enum!(
    /// FHIR Procedure's statuses (`entered-in-error` is the item's own lifecycle here).
    ProcedureStatus {
        Preparation = "preparation",
        InProgress = "in-progress",
        NotDone = "not-done",
        OnHold = "on-hold",
        Stopped = "stopped",
        Completed = "completed",
        Unknown = "unknown",
    }
);

/// A procedure performed (FHIR Procedure), coded in SNOMED CT or CPT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Procedure {
    pub code: Concept,
    pub status: ProcedureStatus,
    /// When it was performed: a moment (start alone) or a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performed_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performed_end: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

crate::code_enum!(
    /// FHIR Encounter's statuses (`entered-in-error` is the item's own lifecycle here).
    EncounterStatus {
        Planned = "planned",
        Arrived = "arrived",
        Triaged = "triaged",
        InProgress = "in-progress",
        OnLeave = "onleave",
        Finished = "finished",
        Cancelled = "cancelled",
        Unknown = "unknown",
    }
);
crate::code_enum!(
    /// HL7 v3 ActEncounterCode: what setting the encounter was in.
    EncounterClass {
        Ambulatory = "AMB",
        Emergency = "EMER",
        Inpatient = "IMP",
        ShortStay = "SS",
        HomeHealth = "HH",
        Virtual = "VR",
        Field = "FLD",
        PreAdmission = "PRENC",
        ObservationStay = "OBSENC",
    }
);

/// A contact between the patient and care (FHIR Encounter): a visit, a stay, a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Encounter {
    pub status: EncounterStatus,
    pub class: EncounterClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter_type: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Concept>,
    /// The appointment this encounter fulfilled, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
}

/// What one item is, with its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ItemContent {
    Allergy(Allergy),
    Medication(Medication),
    Immunization(Immunization),
    Problem(Problem),
    History(HistoryEntry),
    Document(Document),
    Observation(Observation),
    Procedure(Procedure),
    Encounter(Encounter),
}

impl ItemContent {
    pub fn kind(&self) -> ItemKind {
        match self {
            Self::Allergy(_) => ItemKind::Allergy,
            Self::Medication(_) => ItemKind::Medication,
            Self::Immunization(_) => ItemKind::Immunization,
            Self::Problem(_) => ItemKind::Problem,
            Self::History(_) => ItemKind::History,
            Self::Document(_) => ItemKind::Document,
            Self::Observation(_) => ItemKind::Observation,
            Self::Procedure(_) => ItemKind::Procedure,
            Self::Encounter(_) => ItemKind::Encounter,
        }
    }
}

impl ItemKind {
    /// The word an event type starts with: `Allergy` in `AllergyRecorded`.
    pub fn event_prefix(&self) -> &'static str {
        match self {
            Self::Allergy => "Allergy",
            Self::Medication => "Medication",
            Self::Immunization => "Immunization",
            Self::Problem => "Problem",
            Self::History => "HistoryEntry",
            Self::Document => "Document",
            Self::Observation => "Observation",
            Self::Procedure => "Procedure",
            Self::Encounter => "Encounter",
        }
    }
}
