//! Merging a duplicate (source) into a survivor (target), and undoing it. Both aggregates
//! record their side: the source points to the target; the target gains the identifiers and
//! contact points it lacked, remembered per source so an unmerge gives back exactly those.

use chrono::{DateTime, Utc};

use super::contact::{Address, ContactInformation, Identifier, MAX_CONTACT_POINTS};
use super::events::{
    AbsorptionReverted, PatientAbsorbed, PatientEvent, PatientMerged, PatientUnmerged,
};
use super::state::{Absorption, PatientRecord, PatientStatus};
use super::values::{PatientId, Reason};
use super::PatientError;

pub(super) fn merge_into(
    record: &PatientRecord,
    target: PatientId,
    reason: Reason,
    at: DateTime<Utc>,
) -> Result<PatientEvent, PatientError> {
    if target == record.patient_id {
        return Err(PatientError::MergeIntoSelf);
    }
    if record.status == PatientStatus::Merged {
        return Err(PatientError::AlreadyMerged);
    }
    // A survivor of earlier merges is merged away only once those are undone: otherwise an
    // unmerge of one of them would find its survivor gone, and their data spread over two
    // active records.
    if !record.absorptions.is_empty() {
        return Err(PatientError::HasMergedDuplicates);
    }
    Ok(PatientEvent::PatientMerged(PatientMerged {
        target_id: target,
        previous_status: record.status,
        reason,
        merged_at: at,
    }))
}

pub(super) fn absorb(
    record: &PatientRecord,
    source: PatientId,
    identifiers: Vec<Identifier>,
    contact: ContactInformation,
    reason: Reason,
    at: DateTime<Utc>,
) -> Result<PatientEvent, PatientError> {
    if source == record.patient_id {
        return Err(PatientError::MergeIntoSelf);
    }
    match record.status {
        PatientStatus::Archived => return Err(PatientError::TargetArchived),
        PatientStatus::Merged => return Err(PatientError::TargetMergedAway),
        PatientStatus::Active => {}
    }
    if record.absorptions.iter().any(|a| a.source_id == source) {
        return Err(PatientError::AlreadyMerged);
    }
    let gained_identifiers = identifiers
        .into_iter()
        .filter(|id| !record.identifiers.iter().any(|own| own.same_as(id)))
        .collect();
    let own = &record.contact;
    // Gained entries are never preferred, unless the survivor had none of that kind.
    let mut phones: Vec<_> = contact
        .phones
        .into_iter()
        .filter(|p| !own.phones.iter().any(|o| o.number == p.number))
        .collect();
    let mut emails: Vec<_> = contact
        .emails
        .into_iter()
        .filter(|e| {
            !own.emails
                .iter()
                .any(|o| o.address.as_str().to_lowercase() == e.address.as_str().to_lowercase())
        })
        .collect();
    let mut addresses: Vec<_> = contact
        .addresses
        .into_iter()
        .filter(|a| !own.addresses.iter().any(|o| same_address(o, a)))
        .collect();
    // Stay within the limits of a contact list: what does not fit is not gained.
    phones.truncate(MAX_CONTACT_POINTS.saturating_sub(own.phones.len()));
    emails.truncate(MAX_CONTACT_POINTS.saturating_sub(own.emails.len()));
    addresses.truncate(MAX_CONTACT_POINTS.saturating_sub(own.addresses.len()));
    for (i, p) in phones.iter_mut().enumerate() {
        p.preferred = own.phones.is_empty() && i == 0;
    }
    for (i, e) in emails.iter_mut().enumerate() {
        e.preferred = own.emails.is_empty() && i == 0;
    }
    for (i, a) in addresses.iter_mut().enumerate() {
        a.preferred = own.addresses.is_empty() && i == 0;
    }
    Ok(PatientEvent::PatientAbsorbed(PatientAbsorbed {
        source_id: source,
        gained_identifiers,
        gained_contact: ContactInformation {
            phones,
            emails,
            addresses,
        },
        reason,
        absorbed_at: at,
    }))
}

pub(super) fn unmerge(
    record: &PatientRecord,
    reason: Reason,
    at: DateTime<Utc>,
) -> Result<PatientEvent, PatientError> {
    match (record.status, record.merged_into) {
        (PatientStatus::Merged, Some(target)) => {
            Ok(PatientEvent::PatientUnmerged(PatientUnmerged {
                target_id: target,
                restored_status: record.status_before_merge.unwrap_or(PatientStatus::Active),
                reason,
                unmerged_at: at,
            }))
        }
        _ => Err(PatientError::NotMerged),
    }
}

pub(super) fn revert_absorption(
    record: &PatientRecord,
    source: PatientId,
    reason: Reason,
    at: DateTime<Utc>,
) -> Result<PatientEvent, PatientError> {
    let absorption = record
        .absorptions
        .iter()
        .find(|a| a.source_id == source)
        .ok_or(PatientError::NotMerged)?;
    Ok(PatientEvent::AbsorptionReverted(AbsorptionReverted {
        source_id: source,
        removed_identifiers: absorption.identifiers.clone(),
        removed_contact: absorption.contact.clone(),
        reason,
        reverted_at: at,
    }))
}

/// Two addresses are the same place when their lines and postal code agree.
fn same_address(a: &Address, b: &Address) -> bool {
    a.lines == b.lines && a.postal_code == b.postal_code
}

fn prefer_first_if_none<T>(items: &mut [T], preferred: impl Fn(&mut T) -> &mut bool) {
    if items.iter_mut().all(|item| !*preferred(item)) {
        if let Some(first) = items.first_mut() {
            *preferred(first) = true;
        }
    }
}

pub(super) fn apply(record: &mut PatientRecord, event: PatientEvent) {
    match event {
        PatientEvent::PatientMerged(e) => {
            record.status_before_merge = Some(e.previous_status);
            record.status = PatientStatus::Merged;
            record.merged_into = Some(e.target_id);
        }
        PatientEvent::PatientUnmerged(e) => {
            record.status = e.restored_status;
            record.merged_into = None;
            record.status_before_merge = None;
        }
        PatientEvent::PatientAbsorbed(e) => {
            record
                .identifiers
                .extend(e.gained_identifiers.iter().cloned());
            record
                .contact
                .phones
                .extend(e.gained_contact.phones.iter().cloned());
            record
                .contact
                .emails
                .extend(e.gained_contact.emails.iter().cloned());
            record
                .contact
                .addresses
                .extend(e.gained_contact.addresses.iter().cloned());
            record.absorptions.push(Absorption {
                source_id: e.source_id,
                identifiers: e.gained_identifiers,
                contact: e.gained_contact,
            });
        }
        PatientEvent::AbsorptionReverted(e) => {
            let gone = e.removed_contact;
            record
                .identifiers
                .retain(|id| !e.removed_identifiers.iter().any(|r| r.same_as(id)));
            record
                .contact
                .phones
                .retain(|p| !gone.phones.iter().any(|g| g.number == p.number));
            record
                .contact
                .emails
                .retain(|m| !gone.emails.iter().any(|g| g.address == m.address));
            record
                .contact
                .addresses
                .retain(|a| !gone.addresses.iter().any(|g| same_address(g, a)));
            record.absorptions.retain(|a| a.source_id != e.source_id);
            // If the preferred entry went back, the first remaining one is preferred.
            prefer_first_if_none(&mut record.contact.phones, |p| &mut p.preferred);
            prefer_first_if_none(&mut record.contact.emails, |e| &mut e.preferred);
            prefer_first_if_none(&mut record.contact.addresses, |a| &mut a.preferred);
        }
        _ => {}
    }
}
