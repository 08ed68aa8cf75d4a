//! Medical records handling: a patient's allergies, medications, immunizations, problems,
//! health history and documents, each item with its own lifecycle, never deleted (a mistake is
//! marked entered-in-error, with a reason).
//!
//! [`MedicalRecord`] is the aggregate (one per patient); [`MedicalRecordCommand`]s go in,
//! [`MedicalRecordEvent`]s come out, decided by the pure [`MedicalRecord::decide`], which also
//! enforces the clinical safety rules:
//!
//! - a second active allergy to the same substance is refused;
//! - a current medication whose substance an active allergy names needs every such warning
//!   acknowledged; the acknowledgement (who, which allergy) is stored with the medication.
//!
//! Observations, procedures and encounters take part in no such rule: each is a
//! [`ClinicalEntry`], a stream of its own, with the same lifecycle and the same events.

mod aggregate;
mod entry;
pub mod items;
pub mod values;

pub use aggregate::{
    AcknowledgedWarning, Acknowledgement, AllergyWarning, ErrorMark, Item, ItemEnteredInError,
    ItemRecorded, ItemRevised, MedicalRecord, MedicalRecordCommand, MedicalRecordEvent,
};
pub use entry::{ClinicalEntry, ClinicalEntryCommand};
pub use items::{ItemContent, ItemKind};
pub use values::ItemId;

/// Errors of the medical record: one variant per rule, each message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MedicalRecordError {
    #[error("an item with this id is already on the record")]
    ItemIdInUse,
    #[error("the record has no such item")]
    ItemNotFound,
    #[error("the item is at version {current}")]
    VersionMismatch { current: u32 },
    #[error("the item was entered in error and cannot change")]
    EnteredInError,
    #[error("the revision changes nothing")]
    ChangesNothing,
    #[error("the patient already has an active allergy to this substance")]
    DuplicateAllergy { existing: ItemId },
    #[error("the medication matches active allergies; acknowledge each warning to proceed")]
    UnacknowledgedAllergyWarnings(Vec<AllergyWarning>),
    #[error("an acknowledged allergy warning does not apply to this item")]
    AcknowledgedWarningDoesNotApply { allergy_id: ItemId },
    #[error("a stopped or completed medication cannot be made current again; record a new one")]
    MedicationEnded,
    #[error("a document's content cannot be replaced; add a new document")]
    DocumentContentIsFixed,
    #[error("observations, procedures and encounters are kept apart from the medical record")]
    KeptApart,
    #[error("the item belongs to another patient")]
    OtherPatient,
}

impl MedicalRecordError {
    /// A stable machine-readable code for the rule that was broken.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ItemIdInUse => "item-id-in-use",
            Self::ItemNotFound => "item-not-found",
            Self::VersionMismatch { .. } => "version-mismatch",
            Self::EnteredInError => "entered-in-error",
            Self::ChangesNothing => "revision-changes-nothing",
            Self::DuplicateAllergy { .. } => "duplicate-allergy",
            Self::UnacknowledgedAllergyWarnings(_) => "allergy-warning",
            Self::AcknowledgedWarningDoesNotApply { .. } => "acknowledged-warning-does-not-apply",
            Self::MedicationEnded => "medication-ended",
            Self::DocumentContentIsFixed => "document-content-is-fixed",
            Self::KeptApart => "kept-apart",
            Self::OtherPatient => "item-not-found",
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};
    use cqrs_es::Aggregate;
    use uuid::Uuid;

    use super::items::*;
    use super::values::*;
    use super::*;
    use crate::patient::governance::Principal;
    use crate::patient::Reason;

    fn at() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
    }

    fn id(n: u128) -> ItemId {
        ItemId::new(Uuid::from_u128(n))
    }

    fn concept(text: &str) -> Concept {
        Concept::parse("c", None, None, Some(text)).unwrap()
    }

    fn allergy(substance: &str) -> ItemContent {
        ItemContent::Allergy(Allergy {
            substance: concept(substance),
            category: Some(AllergyCategory::Medication),
            criticality: Some(AllergyCriticality::High),
            reactions: vec![],
            clinical_status: AllergyClinicalStatus::Active,
            verification_status: Some(VerificationStatus::Confirmed),
            onset: None,
            note: None,
        })
    }

    fn medication(name: &str, status: MedicationStatus) -> ItemContent {
        ItemContent::Medication(Medication {
            medication: concept(name),
            source: MedicationSource::Order,
            dose: Some(Quantity::parse("d", Some("500"), Some("mg")).unwrap()),
            route: Some(Route::Oral),
            frequency: Some(Frequency::new("f", 3, 1, PeriodUnit::Day, false).unwrap()),
            as_needed: false,
            start: Some(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()),
            end: None,
            status,
            prescriber: Some(Principal::parse("p", "dr-who").unwrap()),
            reason_for_use: None,
            note: None,
        })
    }

    fn ack(ids: &[ItemId]) -> Acknowledgement {
        Acknowledgement {
            by: Principal::parse("p", "dr-who").unwrap(),
            allergies: ids.to_vec(),
        }
    }

    fn record(
        record: &mut MedicalRecord,
        item: ItemId,
        content: ItemContent,
        acks: &[ItemId],
    ) -> Result<(), MedicalRecordError> {
        for e in record.decide(MedicalRecordCommand::Record {
            item_id: item,
            content,
            reason: None,
            acknowledgement: ack(acks),
            at: at(),
        })? {
            record.apply(e);
        }
        Ok(())
    }

    fn reason() -> Reason {
        Reason::parse("reason", "wrong patient").unwrap()
    }

    #[test]
    fn a_second_active_allergy_to_a_substance_is_refused_until_the_first_stands_no_more() {
        let mut r = MedicalRecord::default();
        record(&mut r, id(1), allergy("Penicillin"), &[]).unwrap();
        assert_eq!(
            record(&mut r, id(2), allergy("penicillin"), &[]),
            Err(MedicalRecordError::DuplicateAllergy { existing: id(1) })
        );
        let events = r
            .decide(MedicalRecordCommand::EnterInError {
                item_id: id(1),
                expected_version: 1,
                reason: reason(),
                at: at(),
            })
            .unwrap();
        r.apply(events[0].clone());
        assert_eq!(r.item(id(1)).unwrap().version, 2);
        record(&mut r, id(2), allergy("penicillin"), &[]).unwrap();
    }

    #[test]
    fn a_medication_matching_an_allergy_needs_the_warning_acknowledged() {
        let mut r = MedicalRecord::default();
        record(&mut r, id(1), allergy("Penicillin"), &[]).unwrap();
        let med = medication("Penicillin V potassium 250 MG", MedicationStatus::Active);
        match record(&mut r, id(2), med.clone(), &[]) {
            Err(MedicalRecordError::UnacknowledgedAllergyWarnings(w)) => {
                assert_eq!(w[0].allergy_id, id(1));
                assert_eq!(w[0].criticality, Some(AllergyCriticality::High));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            record(&mut r, id(2), med.clone(), &[id(9)]),
            Err(MedicalRecordError::AcknowledgedWarningDoesNotApply { allergy_id: id(9) })
        );
        record(&mut r, id(2), med, &[id(1)]).unwrap();
        let item = r.item(id(2)).unwrap();
        assert_eq!(item.acknowledged_warnings[0].allergy_id, id(1));
        // A later revision does not ask again for what was acknowledged.
        let on_hold = |version| MedicalRecordCommand::Revise {
            item_id: id(2),
            expected_version: version,
            content: medication("Penicillin V potassium 250 MG", MedicationStatus::OnHold),
            reason: reason(),
            acknowledgement: ack(&[]),
            at: at(),
        };
        assert_eq!(r.decide(on_hold(1)).unwrap().len(), 1);
        // Once the allergy is revised (it turned out worse), the warning is raised again.
        let mut worse = allergy("Penicillin");
        if let ItemContent::Allergy(a) = &mut worse {
            a.note = Some(Note::parse("note", "anaphylaxis").unwrap());
        }
        let events = r
            .decide(MedicalRecordCommand::Revise {
                item_id: id(1),
                expected_version: 1,
                content: worse,
                reason: reason(),
                acknowledgement: ack(&[]),
                at: at(),
            })
            .unwrap();
        r.apply(events[0].clone());
        match r.decide(on_hold(1)) {
            Err(MedicalRecordError::UnacknowledgedAllergyWarnings(w)) => {
                assert_eq!((w[0].allergy_id, w[0].allergy_version), (id(1), 2));
            }
            other => panic!("{other:?}"),
        }
        // A medication no allergy names needs nothing.
        record(
            &mut r,
            id(3),
            medication("Metformin", MedicationStatus::Active),
            &[],
        )
        .unwrap();
    }

    #[test]
    fn what_a_patient_reports_and_an_allergy_of_unknown_criticality_still_meet_the_allergy_check() {
        let mut r = MedicalRecord::default();
        let mut allergy = allergy("Penicillin");
        if let ItemContent::Allergy(a) = &mut allergy {
            (a.category, a.criticality, a.verification_status) = (None, None, None);
        }
        record(&mut r, id(1), allergy, &[]).unwrap();
        let reported = ItemContent::Medication(Medication {
            medication: concept("Penicillin V potassium 250 MG"),
            source: MedicationSource::PatientReported,
            dose: None,
            route: None,
            frequency: None,
            as_needed: false,
            start: None,
            end: None,
            status: MedicationStatus::Unknown,
            prescriber: None,
            reason_for_use: None,
            note: None,
        });
        match record(&mut r, id(2), reported.clone(), &[]) {
            Err(MedicalRecordError::UnacknowledgedAllergyWarnings(w)) => {
                assert_eq!((w[0].allergy_id, w[0].criticality), (id(1), None));
            }
            other => panic!("{other:?}"),
        }
        record(&mut r, id(2), reported, &[id(1)]).unwrap();
    }

    #[test]
    fn medications_and_allergies_stored_before_fields_became_optional_read_as_they_were() {
        let medication: Medication = serde_json::from_value(serde_json::json!({
            "medication": {"text": "Metformin"},
            "dose": {"value": "500", "unit": "mg"},
            "route": "oral",
            "frequency": {"count": 2, "period": 1, "period_unit": "d", "as_needed": false},
            "start": "2026-01-01",
            "status": "active",
            "prescriber": "dr-who",
        }))
        .unwrap();
        assert_eq!(medication.source, MedicationSource::Order);
        assert_eq!(medication.route, Some(Route::Oral));
        assert_eq!(medication.prescriber.unwrap().as_str(), "dr-who");
        let allergy: Allergy = serde_json::from_value(serde_json::json!({
            "substance": {"text": "Peanut"},
            "category": "food",
            "criticality": "high",
            "clinical_status": "active",
            "verification_status": "refuted",
        }))
        .unwrap();
        assert_eq!(allergy.criticality, Some(AllergyCriticality::High));
        assert!(!allergy.is_active());
    }

    #[test]
    fn revisions_check_versions_kinds_and_ended_medications() {
        let mut r = MedicalRecord::default();
        record(
            &mut r,
            id(1),
            medication("Metformin", MedicationStatus::Active),
            &[],
        )
        .unwrap();
        let revise = |content: ItemContent, version: u32| MedicalRecordCommand::Revise {
            item_id: id(1),
            expected_version: version,
            content,
            reason: reason(),
            acknowledgement: ack(&[]),
            at: at(),
        };
        assert_eq!(
            r.decide(revise(
                medication("Metformin", MedicationStatus::Stopped),
                3
            )),
            Err(MedicalRecordError::VersionMismatch { current: 1 })
        );
        assert_eq!(
            r.decide(revise(allergy("x"), 1)),
            Err(MedicalRecordError::ItemNotFound)
        );
        assert_eq!(
            r.decide(revise(medication("Metformin", MedicationStatus::Active), 1)),
            Err(MedicalRecordError::ChangesNothing)
        );
        let e = r
            .decide(revise(
                medication("Metformin", MedicationStatus::Stopped),
                1,
            ))
            .unwrap();
        r.apply(e[0].clone());
        assert_eq!(
            r.decide(revise(medication("Metformin", MedicationStatus::Active), 2)),
            Err(MedicalRecordError::MedicationEnded)
        );
    }

    #[test]
    fn event_types_name_the_kind() {
        use cqrs_es::DomainEvent;
        let e = MedicalRecordEvent::ItemEnteredInError(ItemEnteredInError {
            item_id: id(1),
            kind: ItemKind::History,
            reason: reason(),
            entered_at: at(),
        });
        assert_eq!(e.event_type(), "HistoryEntryEnteredInError");
    }
}
