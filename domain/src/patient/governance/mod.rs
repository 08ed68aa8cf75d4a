//! Who may see a patient's record and how long it is kept: care relationships, consent
//! directives, legal holds and erasure.
//!
//! These are commands and events of the patient aggregate like any other, so every grant and
//! every withdrawal is in the record's history with who, when and why.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::values::Reason;
use crate::validation::FieldError;

pub(super) mod rules;

/// The longest user or organization id accepted.
const MAX_PRINCIPAL: usize = 128;

/// A user id (a token's `sub`) or an organization id: printable ASCII without spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Principal(String);

impl Principal {
    /// # Errors
    ///
    /// A [`FieldError`] on `field` when the id is empty, too long or not printable ASCII.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        if value.is_empty() || value.len() > MAX_PRINCIPAL {
            return Err(FieldError::new(
                field,
                format!("must be 1 to {MAX_PRINCIPAL} characters"),
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldError::new(
                field,
                "must be printable ASCII without spaces",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

crate::code_enum!(
    /// What a practitioner is to the patient.
    CareRole {
        Attending = "attending",
        PrimaryCare = "primary-care",
        Consulting = "consulting",
        Nursing = "nursing",
    }
);

crate::code_enum!(
    /// Why a patient's data is erased.
    ErasureReason {
        PatientRequest = "patient-request",
        RetentionExpired = "retention-expired",
        LegalOrder = "legal-order",
        RegisteredInError = "registered-in-error",
    }
);

/// A practitioner currently caring for the patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CareRelationship {
    pub practitioner: Principal,
    pub role: CareRole,
    pub since: DateTime<Utc>,
}

/// What a patient allows beyond the default policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ConsentDirective {
    /// Users of another organization may read the record (with their role's permissions).
    ShareWithOrganization { organization: Principal },
    /// Every user with this role may read the record, without a care relationship.
    ShareWithRole { role: String },
    /// The record must not be used for research.
    ResearchOptOut,
}

/// A consent directive in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Consent {
    pub consent_id: Uuid,
    pub directive: ConsentDirective,
    pub granted_at: DateTime<Utc>,
}

/// What the patient's governance is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Governance {
    #[serde(default)]
    pub care_team: Vec<CareRelationship>,
    #[serde(default)]
    pub consents: Vec<Consent>,
    /// Why the record is held, when it is: it may not be erased meanwhile.
    #[serde(default)]
    pub legal_hold: Option<Reason>,
}

impl Governance {
    /// Whether `practitioner` is in the patient's care team.
    pub fn cares_for(&self, practitioner: &str) -> bool {
        self.care_team
            .iter()
            .any(|r| r.practitioner.as_str() == practitioner)
    }

    /// Whether a directive shares the record with `organization`.
    pub fn shared_with_organization(&self, organization: &str) -> bool {
        self.consents.iter().any(|c| {
            matches!(&c.directive, ConsentDirective::ShareWithOrganization { organization: o } if o.as_str() == organization)
        })
    }

    /// Whether a directive shares the record with everyone holding `role`.
    pub fn shared_with_role(&self, role: &str) -> bool {
        self.consents.iter().any(
            |c| matches!(&c.directive, ConsentDirective::ShareWithRole { role: r } if r == role),
        )
    }

    pub fn research_opt_out(&self) -> bool {
        self.consents
            .iter()
            .any(|c| c.directive == ConsentDirective::ResearchOptOut)
    }
}

/// Commands about access and retention.
#[derive(Debug, Clone, PartialEq)]
pub enum GovernanceChange {
    StartCareRelationship {
        practitioner: Principal,
        role: CareRole,
        at: DateTime<Utc>,
    },
    EndCareRelationship {
        practitioner: Principal,
        reason: Reason,
        at: DateTime<Utc>,
    },
    GrantConsent {
        consent_id: Uuid,
        directive: ConsentDirective,
        at: DateTime<Utc>,
    },
    WithdrawConsent {
        consent_id: Uuid,
        reason: Reason,
        at: DateTime<Utc>,
    },
    PlaceLegalHold {
        reason: Reason,
        at: DateTime<Utc>,
    },
    ReleaseLegalHold {
        reason: Reason,
        at: DateTime<Utc>,
    },
    /// Erases the patient's data: their data key is destroyed and nothing of them is left
    /// readable but the fact of erasure.
    Forget {
        reason: ErasureReason,
        /// A ticket or case number; never free text, so no patient data can slip in.
        reference: Option<Principal>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CareRelationshipStarted {
    pub practitioner: Principal,
    pub role: CareRole,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CareRelationshipEnded {
    pub practitioner: Principal,
    pub reason: Reason,
    pub ended_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentGranted {
    pub consent_id: Uuid,
    pub directive: ConsentDirective,
    pub granted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentWithdrawn {
    pub consent_id: Uuid,
    pub reason: Reason,
    pub withdrawn_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegalHoldPlaced {
    pub reason: Reason,
    pub placed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegalHoldReleased {
    pub reason: Reason,
    pub released_at: DateTime<Utc>,
}

/// The patient's data was erased. Stored and published in the clear, holds no patient data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientForgotten {
    pub reason: ErasureReason,
    pub reference: Option<Principal>,
    pub forgotten_at: DateTime<Utc>,
}
