//! Who is asking: the authenticated caller as every use case sees them, and why a request is
//! refused.

use crate::policy::{self, Action, Role};

domain::code_enum!(
    /// Why of a request: HL7 purpose-of-use, simplified.
    Purpose {
        Treatment = "treatment",
        Payment = "payment",
        Operations = "operations",
        Research = "research",
    }
);

domain::code_enum!(
    /// The reason codes accepted for break-the-glass. Codes, never free text, so the audit
    /// log stays free of patient data.
    BreakGlassReason {
        EmergencyTreatment = "emergency-treatment",
        PatientUnableToConsent = "patient-unable-to-consent",
        UrgentClinicalNeed = "urgent-clinical-need",
        ImminentThreat = "imminent-threat",
    }
);

/// The authenticated caller, and what their request says about why it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: String,
    pub roles: Vec<Role>,
    /// For the `patient` role: the patient the user is.
    pub patient_id: Option<uuid::Uuid>,
    pub organization: Option<String>,
    /// The token's session (its `sid`, else its `jti`, else the token itself).
    pub session_id: String,
    /// `X-Purpose-Of-Use`, treatment when absent.
    pub purpose: Purpose,
    /// `X-Break-Glass-Reason`: emergency access asked for.
    pub break_glass: Option<BreakGlassReason>,
    /// The request id, for access entries.
    pub request_id: Option<String>,
    /// The request's W3C trace context, for access entries.
    pub traceparent: Option<String>,
    /// The SMART scopes of the token, when it carries a `scope` claim: they narrow what the
    /// roles allow ([`crate::smart`]).
    pub scopes: Option<crate::smart::Scopes>,
    /// The SMART launch context's patient (the token's `patient` claim).
    pub launch_patient: Option<uuid::Uuid>,
    /// Set when only `patient/` scopes grant the request: it reaches this patient only.
    pub confined_to: Option<uuid::Uuid>,
}

impl AuthUser {
    /// Allows the request to go on only if one of the user's roles may do `action`.
    ///
    /// # Errors
    ///
    /// [`Refused::Forbidden`] otherwise.
    pub fn require(&self, action: Action) -> Result<(), Refused> {
        if self.roles.iter().any(|role| policy::allows(*role, action)) {
            Ok(())
        } else {
            tracing::info!(user_id = %self.id, ?action, "forbidden");
            Err(Refused::Forbidden)
        }
    }
}

/// Why a caller does not get what they asked for, as the access rules say it; the transport
/// turns it into its answer (403, 404, 410).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not allowed: the same answer whether the patient exists or not.
    #[error("forbidden")]
    Forbidden,
    /// Nobody there (told only to callers who could reach anyone).
    #[error("not found")]
    NotFound,
    /// Erased (told only to callers who could reach anyone).
    #[error("gone")]
    Gone,
}
