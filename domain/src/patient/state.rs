//! The state of a registered patient's record, as the events have made it: what decisions
//! read and what the API shows.

use serde::{Deserialize, Serialize};

use super::contact::{ContactInformation, Identifier};
use super::governance::Governance;
use super::record::LanguageTag;
use super::record::{Coverage, EmergencyContact, Preferences};
use super::values::{AdministrativeGender, BirthDate, MaritalStatus, Mrn, PatientId, PersonName};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientRecord {
    pub patient_id: PatientId,
    pub mrn: Mrn,
    pub name: PersonName,
    pub birth_date: Option<BirthDate>,
    pub gender: AdministrativeGender,
    #[serde(default)]
    pub marital_status: Option<MaritalStatus>,
    #[serde(default)]
    pub languages: Vec<LanguageTag>,
    pub identifiers: Vec<Identifier>,
    pub contact: ContactInformation,
    #[serde(default)]
    pub preferences: Preferences,
    #[serde(default)]
    pub emergency_contacts: Vec<EmergencyContact>,
    /// Every coverage ever recorded, ended ones included.
    #[serde(default)]
    pub coverages: Vec<Coverage>,
    pub status: PatientStatus,
    /// The survivor this patient was merged into.
    #[serde(default)]
    pub merged_into: Option<PatientId>,
    #[serde(default)]
    pub status_before_merge: Option<PatientStatus>,
    /// The duplicates merged into this patient, with what each brought.
    #[serde(default)]
    pub absorptions: Vec<Absorption>,
    #[serde(default)]
    pub governance: Governance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatientStatus {
    Active,
    Archived,
    /// Merged into another patient, the survivor.
    Merged,
}

impl PatientStatus {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
            Self::Merged => "merged",
        }
    }
}

/// What a survivor gained from one merged duplicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Absorption {
    pub source_id: PatientId,
    pub identifiers: Vec<Identifier>,
    pub contact: ContactInformation,
}
