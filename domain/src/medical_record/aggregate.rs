//! A patient's medical record: its items, the pure decision function and the cqrs-es adapter.
//!
//! One record per patient (its aggregate id is the patient's id), holding every item: the
//! safety rules compare items with each other (a second active allergy to a substance, a
//! medication the patient is allergic to), so they must be decided on one consistent state.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::items::{Allergy, AllergyCriticality, ItemContent, ItemKind, Medication};
use super::values::ItemId;
use super::MedicalRecordError;
use crate::patient::governance::Principal;
use crate::patient::{PatientId, Reason};

/// One item as it stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub item_id: ItemId,
    pub content: ItemContent,
    /// 1 when recorded, one more at each revision or when entered in error.
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered_in_error: Option<ErrorMark>,
    /// Allergy warnings acknowledged for this item (a medication), over all its versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_warnings: Vec<AcknowledgedWarning>,
    pub recorded_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why and when an item was marked entered-in-error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorMark {
    pub reason: Reason,
    pub at: DateTime<Utc>,
}

/// An allergy warning the prescriber saw and overrode, for the allergy as it then stood: once
/// the allergy is revised (say its criticality rises), the warning is raised again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AcknowledgedWarning {
    pub allergy_id: ItemId,
    #[serde(default)]
    pub allergy_version: u32,
    pub acknowledged_by: Principal,
}

/// A medication's substance matches an active allergy (at its current version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllergyWarning {
    pub allergy_id: ItemId,
    pub allergy_version: u32,
    /// When the allergy states it.
    pub criticality: Option<AllergyCriticality>,
}

/// The warnings a caller acknowledges with a command, and who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub by: Principal,
    pub allergies: Vec<ItemId>,
}

/// A patient's medical record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MedicalRecord {
    items: BTreeMap<ItemId, Item>,
}

/// Commands on a medical record. Time and ids arrive with them.
#[derive(Debug, Clone, PartialEq)]
pub enum MedicalRecordCommand {
    Record {
        item_id: ItemId,
        content: ItemContent,
        reason: Option<Reason>,
        acknowledgement: Acknowledgement,
        at: DateTime<Utc>,
    },
    Revise {
        item_id: ItemId,
        /// The item version the caller saw (`If-Match`).
        expected_version: u32,
        content: ItemContent,
        reason: Reason,
        acknowledgement: Acknowledgement,
        at: DateTime<Utc>,
    },
    EnterInError {
        item_id: ItemId,
        expected_version: u32,
        reason: Reason,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecorded {
    /// The patient, on an item kept in a stream of its own ([`super::ClinicalEntry`]); a
    /// medical record's stream is the patient's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<PatientId>,
    pub item_id: ItemId,
    pub content: ItemContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_warnings: Vec<AcknowledgedWarning>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRevised {
    pub item_id: ItemId,
    pub content: ItemContent,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_warnings: Vec<AcknowledgedWarning>,
    pub revised_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemEnteredInError {
    pub item_id: ItemId,
    pub kind: ItemKind,
    pub reason: Reason,
    pub entered_at: DateTime<Utc>,
}

/// The events of a medical record. Stored as these three shapes; published per kind
/// (`AllergyRecorded`, `MedicationRevised`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MedicalRecordEvent {
    ItemRecorded(ItemRecorded),
    ItemRevised(ItemRevised),
    ItemEnteredInError(ItemEnteredInError),
}

impl MedicalRecordEvent {
    pub fn item_id(&self) -> ItemId {
        match self {
            Self::ItemRecorded(e) => e.item_id,
            Self::ItemRevised(e) => e.item_id,
            Self::ItemEnteredInError(e) => e.item_id,
        }
    }

    pub fn kind(&self) -> ItemKind {
        match self {
            Self::ItemRecorded(e) => e.content.kind(),
            Self::ItemRevised(e) => e.content.kind(),
            Self::ItemEnteredInError(e) => e.kind,
        }
    }
}

impl DomainEvent for MedicalRecordEvent {
    fn event_type(&self) -> String {
        let suffix = match self {
            Self::ItemRecorded(_) => "Recorded",
            Self::ItemRevised(_) => "Revised",
            Self::ItemEnteredInError(_) => "EnteredInError",
        };
        format!("{}{suffix}", self.kind().event_prefix())
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl MedicalRecord {
    pub fn item(&self, id: ItemId) -> Option<&Item> {
        self.items.get(&id)
    }

    /// Every item, entered-in-error ones included, in id order.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    /// Decides which events a command produces, or which rule it breaks. Pure.
    ///
    /// # Errors
    ///
    /// The [`MedicalRecordError`] naming the broken rule.
    pub fn decide(
        &self,
        command: MedicalRecordCommand,
    ) -> Result<Vec<MedicalRecordEvent>, MedicalRecordError> {
        let kind = match &command {
            MedicalRecordCommand::Record { content, .. }
            | MedicalRecordCommand::Revise { content, .. } => Some(content.kind()),
            MedicalRecordCommand::EnterInError { .. } => None,
        };
        if kind.is_some_and(|k| k.has_own_stream()) {
            return Err(MedicalRecordError::KeptApart);
        }
        self.decide_any(command)
    }

    /// [`Self::decide`] for items of any kind: what a [`super::ClinicalEntry`] decides with.
    pub(super) fn decide_any(
        &self,
        command: MedicalRecordCommand,
    ) -> Result<Vec<MedicalRecordEvent>, MedicalRecordError> {
        let event = match command {
            MedicalRecordCommand::Record {
                item_id,
                content,
                reason,
                acknowledgement,
                at,
            } => {
                if self.items.contains_key(&item_id) {
                    return Err(MedicalRecordError::ItemIdInUse);
                }
                let acknowledged_warnings =
                    self.check_safety(item_id, &content, &[], &acknowledgement)?;
                MedicalRecordEvent::ItemRecorded(ItemRecorded {
                    patient_id: None,
                    item_id,
                    content,
                    reason,
                    acknowledged_warnings,
                    recorded_at: at,
                })
            }
            MedicalRecordCommand::Revise {
                item_id,
                expected_version,
                content,
                reason,
                acknowledgement,
                at,
            } => {
                let item = self.current(item_id, content.kind(), expected_version)?;
                if item.content == content {
                    return Err(MedicalRecordError::ChangesNothing);
                }
                revision_allowed(&item.content, &content)?;
                let acknowledged_warnings = self.check_safety(
                    item_id,
                    &content,
                    &item.acknowledged_warnings,
                    &acknowledgement,
                )?;
                MedicalRecordEvent::ItemRevised(ItemRevised {
                    item_id,
                    content,
                    reason,
                    acknowledged_warnings,
                    revised_at: at,
                })
            }
            MedicalRecordCommand::EnterInError {
                item_id,
                expected_version,
                reason,
                at,
            } => {
                let kind = self
                    .items
                    .get(&item_id)
                    .map(|i| i.content.kind())
                    .ok_or(MedicalRecordError::ItemNotFound)?;
                self.current(item_id, kind, expected_version)?;
                MedicalRecordEvent::ItemEnteredInError(ItemEnteredInError {
                    item_id,
                    kind,
                    reason,
                    entered_at: at,
                })
            }
        };
        Ok(vec![event])
    }

    /// The item to change: it exists, is of `kind`, is at `expected_version`, and stands.
    fn current(
        &self,
        item_id: ItemId,
        kind: ItemKind,
        expected_version: u32,
    ) -> Result<&Item, MedicalRecordError> {
        let item = self
            .items
            .get(&item_id)
            .filter(|i| i.content.kind() == kind)
            .ok_or(MedicalRecordError::ItemNotFound)?;
        if item.version != expected_version {
            return Err(MedicalRecordError::VersionMismatch {
                current: item.version,
            });
        }
        if item.entered_in_error.is_some() {
            return Err(MedicalRecordError::EnteredInError);
        }
        Ok(item)
    }

    /// The items that stand (not entered in error), other than `except`.
    fn standing(&self, except: ItemId) -> impl Iterator<Item = &Item> {
        self.items
            .values()
            .filter(move |i| i.item_id != except && i.entered_in_error.is_none())
    }

    fn active_allergies(&self, except: ItemId) -> impl Iterator<Item = (&Item, &Allergy)> {
        self.standing(except).filter_map(|i| match &i.content {
            ItemContent::Allergy(a) if a.is_active() => Some((i, a)),
            _ => None,
        })
    }

    /// The allergy warnings a medication raises: every active allergy whose substance the
    /// medication names.
    pub fn allergy_warnings(&self, medication: &Medication) -> Vec<AllergyWarning> {
        self.active_allergies(ItemId::new(uuid::Uuid::nil()))
            .filter(|(_, allergy)| allergy.substance.named_in(&medication.medication))
            .map(|(item, allergy)| AllergyWarning {
                allergy_id: item.item_id,
                allergy_version: item.version,
                criticality: allergy.criticality,
            })
            .collect()
    }

    /// The current medications (standing, active or on hold) an allergy's substance names:
    /// what the clinician recording the allergy should review.
    pub fn medications_named_by(&self, allergy: &Allergy) -> Vec<ItemId> {
        self.standing(ItemId::new(uuid::Uuid::nil()))
            .filter_map(|i| match &i.content {
                ItemContent::Medication(m)
                    if m.status.is_current() && allergy.substance.named_in(&m.medication) =>
                {
                    Some(i.item_id)
                }
                _ => None,
            })
            .collect()
    }

    /// The safety rules of an item about to be stored; returns the warnings newly
    /// acknowledged.
    fn check_safety(
        &self,
        item_id: ItemId,
        content: &ItemContent,
        already_acknowledged: &[AcknowledgedWarning],
        acknowledgement: &Acknowledgement,
    ) -> Result<Vec<AcknowledgedWarning>, MedicalRecordError> {
        match content {
            ItemContent::Allergy(allergy) if allergy.is_active() => {
                if let Some((existing, _)) = self
                    .active_allergies(item_id)
                    .find(|(_, other)| other.substance.same_as(&allergy.substance))
                {
                    return Err(MedicalRecordError::DuplicateAllergy {
                        existing: existing.item_id,
                    });
                }
                Ok(Vec::new())
            }
            ItemContent::Medication(medication) if medication.status.is_current() => {
                let warnings = self.allergy_warnings(medication);
                if let Some(unknown) = acknowledgement
                    .allergies
                    .iter()
                    .find(|id| !warnings.iter().any(|w| w.allergy_id == **id))
                {
                    return Err(MedicalRecordError::AcknowledgedWarningDoesNotApply {
                        allergy_id: *unknown,
                    });
                }
                let covered = |w: &AllergyWarning| {
                    already_acknowledged.iter().any(|a| {
                        a.allergy_id == w.allergy_id && a.allergy_version == w.allergy_version
                    })
                };
                let pending: Vec<AllergyWarning> = warnings
                    .iter()
                    .filter(|w| !covered(w) && !acknowledgement.allergies.contains(&w.allergy_id))
                    .cloned()
                    .collect();
                if !pending.is_empty() {
                    return Err(MedicalRecordError::UnacknowledgedAllergyWarnings(pending));
                }
                Ok(warnings
                    .iter()
                    .filter(|w| !covered(w) && acknowledgement.allergies.contains(&w.allergy_id))
                    .map(|w| AcknowledgedWarning {
                        allergy_id: w.allergy_id,
                        allergy_version: w.allergy_version,
                        acknowledged_by: acknowledgement.by.clone(),
                    })
                    .collect())
            }
            _ if !acknowledgement.allergies.is_empty() => {
                Err(MedicalRecordError::AcknowledgedWarningDoesNotApply {
                    allergy_id: acknowledgement.allergies[0],
                })
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The rules between two versions of one item.
fn revision_allowed(before: &ItemContent, after: &ItemContent) -> Result<(), MedicalRecordError> {
    match (before, after) {
        (ItemContent::Medication(before), ItemContent::Medication(after))
            if before.status.has_ended() && after.status.is_current() =>
        {
            Err(MedicalRecordError::MedicationEnded)
        }
        (ItemContent::Document(before), ItemContent::Document(after))
            if before.content != after.content =>
        {
            Err(MedicalRecordError::DocumentContentIsFixed)
        }
        _ => Ok(()),
    }
}

impl Aggregate for MedicalRecord {
    const TYPE: &'static str = "MedicalRecord";
    type Command = MedicalRecordCommand;
    type Event = MedicalRecordEvent;
    type Error = MedicalRecordError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MedicalRecordEvent::ItemRecorded(e) => {
                self.items.insert(
                    e.item_id,
                    Item {
                        item_id: e.item_id,
                        content: e.content,
                        version: 1,
                        entered_in_error: None,
                        acknowledged_warnings: e.acknowledged_warnings,
                        recorded_at: e.recorded_at,
                        updated_at: e.recorded_at,
                    },
                );
            }
            MedicalRecordEvent::ItemRevised(e) => {
                if let Some(item) = self.items.get_mut(&e.item_id) {
                    item.content = e.content;
                    item.version += 1;
                    item.acknowledged_warnings.extend(e.acknowledged_warnings);
                    item.updated_at = e.revised_at;
                }
            }
            MedicalRecordEvent::ItemEnteredInError(e) => {
                if let Some(item) = self.items.get_mut(&e.item_id) {
                    item.version += 1;
                    item.entered_in_error = Some(ErrorMark {
                        reason: e.reason,
                        at: e.entered_at,
                    });
                    item.updated_at = e.entered_at;
                }
            }
        }
    }
}
