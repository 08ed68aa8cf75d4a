//! The governance rules: how care relationships, consents, legal holds and erasure change a
//! record, decided on the record's state.

use super::super::events::PatientEvent;
use super::super::state::{PatientRecord, PatientStatus};
use super::super::PatientError;
use super::{
    CareRelationship, CareRelationshipEnded, CareRelationshipStarted, Consent, ConsentGranted,
    ConsentWithdrawn, GovernanceChange, LegalHoldPlaced, LegalHoldReleased, PatientForgotten,
};

/// Decides a governance command.
pub(in crate::patient) fn decide(
    record: &PatientRecord,
    change: GovernanceChange,
) -> Result<PatientEvent, PatientError> {
    use GovernanceChange as C;
    use PatientEvent as E;
    let governance = &record.governance;
    let merged = record.status == PatientStatus::Merged;
    Ok(match change {
        C::PlaceLegalHold { reason, at } => {
            if governance.legal_hold.is_some() {
                return Err(PatientError::AlreadyOnLegalHold);
            }
            E::LegalHoldPlaced(LegalHoldPlaced {
                reason,
                placed_at: at,
            })
        }
        C::ReleaseLegalHold { reason, at } => {
            if governance.legal_hold.is_none() {
                return Err(PatientError::NotOnLegalHold);
            }
            E::LegalHoldReleased(LegalHoldReleased {
                reason,
                released_at: at,
            })
        }
        C::Forget {
            reason,
            reference,
            at,
        } => {
            if governance.legal_hold.is_some() {
                return Err(PatientError::LegalHoldPreventsErasure);
            }
            if !record.absorptions.is_empty() {
                return Err(PatientError::HasMergedDuplicates);
            }
            E::PatientForgotten(PatientForgotten {
                reason,
                reference,
                forgotten_at: at,
            })
        }
        _ if merged => return Err(PatientError::MergedPatientCannotBeChanged),
        C::StartCareRelationship {
            practitioner,
            role,
            at,
        } => {
            if governance.cares_for(practitioner.as_str()) {
                return Err(PatientError::CareRelationshipExists);
            }
            E::CareRelationshipStarted(CareRelationshipStarted {
                practitioner,
                role,
                started_at: at,
            })
        }
        C::EndCareRelationship {
            practitioner,
            reason,
            at,
        } => {
            if !governance.cares_for(practitioner.as_str()) {
                return Err(PatientError::CareRelationshipNotFound);
            }
            E::CareRelationshipEnded(CareRelationshipEnded {
                practitioner,
                reason,
                ended_at: at,
            })
        }
        C::GrantConsent {
            consent_id,
            directive,
            at,
        } => {
            if governance.consents.iter().any(|c| c.directive == directive) {
                return Err(PatientError::ConsentAlreadyInForce);
            }
            if governance
                .consents
                .iter()
                .any(|c| c.consent_id == consent_id)
            {
                return Err(PatientError::ItemIdInUse);
            }
            E::ConsentGranted(ConsentGranted {
                consent_id,
                directive,
                granted_at: at,
            })
        }
        C::WithdrawConsent {
            consent_id,
            reason,
            at,
        } => {
            if !governance
                .consents
                .iter()
                .any(|c| c.consent_id == consent_id)
            {
                return Err(PatientError::ConsentNotFound);
            }
            E::ConsentWithdrawn(ConsentWithdrawn {
                consent_id,
                reason,
                withdrawn_at: at,
            })
        }
    })
}

/// Applies a governance event to the record.
pub(in crate::patient) fn apply(record: &mut PatientRecord, event: PatientEvent) {
    let governance = &mut record.governance;
    match event {
        PatientEvent::CareRelationshipStarted(e) => governance.care_team.push(CareRelationship {
            practitioner: e.practitioner,
            role: e.role,
            since: e.started_at,
        }),
        PatientEvent::CareRelationshipEnded(e) => governance
            .care_team
            .retain(|r| r.practitioner != e.practitioner),
        PatientEvent::ConsentGranted(e) => governance.consents.push(Consent {
            consent_id: e.consent_id,
            directive: e.directive,
            granted_at: e.granted_at,
        }),
        PatientEvent::ConsentWithdrawn(e) => {
            governance.consents.retain(|c| c.consent_id != e.consent_id)
        }
        PatientEvent::LegalHoldPlaced(e) => governance.legal_hold = Some(e.reason),
        PatientEvent::LegalHoldReleased(_) => governance.legal_hold = None,
        _ => {}
    }
}
