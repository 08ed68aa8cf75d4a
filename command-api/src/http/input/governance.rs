//! The bodies that govern a record: care relationships, consents, erasure, and merging
//! duplicates.

use domain::patient::governance::{CareRole, ConsentDirective, ErasureReason, Principal};
use domain::patient::{PatientId, Reason};
use domain::{FieldError, FieldErrors};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::patient::{optional_text, reason, text};
use super::{objects, one, parse, AllOk, Field};
use crate::auth::Role;

/// `POST /v1/patients/{id}/care-relationships`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CareRelationshipBody {
    /// The practitioner's user id.
    pub practitioner: Field<String>,
    pub role: Field<String>,
}

/// `{"kind": "share-with-organization", "organization": "..."}`,
/// `{"kind": "share-with-role", "role": "clinician"}` or `{"kind": "research-opt-out"}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DirectiveBody {
    pub kind: Field<String>,
    #[serde(default)]
    pub organization: Field<String>,
    #[serde(default)]
    pub role: Field<String>,
}

/// `POST /v1/patients/{id}/consents`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConsentBody {
    pub directive: Field<DirectiveBody>,
}

/// `POST /v1/patients/{id}/forget`: a reason code and a ticket number, so that the fact of
/// erasure holds no patient data.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ForgetBody {
    pub reason: Field<String>,
    #[serde(default)]
    pub reference: Field<String>,
}

/// `POST /v1/patients/{id}/merge`: the survivor, and why.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MergeBody {
    pub target_id: Field<String>,
    pub reason: Field<String>,
}

objects!(DirectiveBody);

/// A care relationship's practitioner and role.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn care_relationship(
    object: &Map<String, Value>,
) -> Result<(Principal, CareRole), FieldErrors> {
    parse(object, "")?.then(|body: CareRelationshipBody| {
        (
            text(&body.practitioner, "practitioner", |v| {
                one(Principal::parse("practitioner", v))
            }),
            text(&body.role, "role", |v| one(CareRole::parse("role", v))),
        )
            .all_ok()
    })
}

const KINDS: [&str; 3] = [
    "share-with-organization",
    "share-with-role",
    "research-opt-out",
];

/// A consent directive.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn consent(object: &Map<String, Value>) -> Result<ConsentDirective, FieldErrors> {
    parse(object, "")?.then(|body: ConsentBody| {
        let directive = body.directive.required("directive")?;
        let kind = directive.kind.required("directive.kind")?;
        match kind.as_str() {
            "share-with-organization" => Ok(ConsentDirective::ShareWithOrganization {
                organization: text(&directive.organization, "directive.organization", |v| {
                    one(Principal::parse("directive.organization", v))
                })?,
            }),
            "share-with-role" => {
                let role = text(&directive.role, "directive.role", |v| {
                    Role::parse(v)
                        .filter(|r| *r == Role::Clinician)
                        .ok_or_else(|| {
                            FieldError::new(
                                "directive.role",
                                "must be clinician: the only role that needs consent to read",
                            )
                            .into()
                        })
                })?;
                Ok(ConsentDirective::ShareWithRole {
                    role: role.as_str().to_owned(),
                })
            }
            "research-opt-out" => Ok(ConsentDirective::ResearchOptOut),
            _ => Err(FieldError::new(
                "directive.kind",
                format!("must be one of {}", KINDS.join(", ")),
            )
            .into()),
        }
    })
}

/// An erasure's reason and reference.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn forget(
    object: &Map<String, Value>,
) -> Result<(ErasureReason, Option<Principal>), FieldErrors> {
    parse(object, "")?.then(|body: ForgetBody| {
        (
            text(&body.reason, "reason", |v| {
                one(ErasureReason::parse("reason", v))
            }),
            optional_text(&body.reference, "reference", |v| {
                one(Principal::parse("reference", v))
            }),
        )
            .all_ok()
    })
}

/// A merge's survivor and reason.
///
/// # Errors
///
/// Every bad field, by its path.
pub fn merge(object: &Map<String, Value>) -> Result<(PatientId, Reason), FieldErrors> {
    parse(object, "")?.then(|body: MergeBody| {
        (
            text(&body.target_id, "target_id", |v| {
                one(PatientId::parse("target_id", v))
            }),
            text(&body.reason, "reason", |v| reason(v, "reason")),
        )
            .all_ok()
    })
}
