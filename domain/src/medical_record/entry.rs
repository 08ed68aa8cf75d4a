//! A clinical item kept in a stream of its own: an observation, a procedure or an encounter.
//! They take part in no rule between items, so none of them is loaded to decide about another:
//! a chart of thousands of results costs recording an allergy nothing.
//!
//! The lifecycle is the medical record's (record, revise with a reason, entered-in-error,
//! versions) and so are the events; the first one names the patient.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::aggregate::{
    Acknowledgement, Item, MedicalRecord, MedicalRecordCommand, MedicalRecordEvent,
};
use super::MedicalRecordError;
use crate::patient::PatientId;

/// One observation, procedure or encounter, and its patient.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClinicalEntry {
    patient_id: Option<PatientId>,
    /// The entry's one item, kept in a record of one.
    record: MedicalRecord,
}

/// A command on an entry: the medical record's, for the patient it is (to be) about.
#[derive(Debug, Clone, PartialEq)]
pub struct ClinicalEntryCommand {
    pub patient_id: PatientId,
    pub command: MedicalRecordCommand,
}

impl ClinicalEntry {
    /// The patient the entry is about, once recorded.
    pub fn patient_id(&self) -> Option<PatientId> {
        self.patient_id
    }

    /// The item, once recorded.
    pub fn item(&self) -> Option<&Item> {
        self.record.items().next()
    }

    /// The entry as a medical record of its one item: what the record's readers take.
    pub fn as_record(&self) -> &MedicalRecord {
        &self.record
    }

    /// Decides which events a command produces, or which rule it breaks. Pure.
    ///
    /// # Errors
    ///
    /// [`MedicalRecordError::KeptApart`] for a kind the medical record keeps;
    /// [`MedicalRecordError::OtherPatient`] for another patient's entry; else the medical
    /// record's rules for one item.
    pub fn decide(
        &self,
        ClinicalEntryCommand {
            patient_id,
            command,
        }: ClinicalEntryCommand,
    ) -> Result<Vec<MedicalRecordEvent>, MedicalRecordError> {
        if self.patient_id.is_some_and(|own| own != patient_id) {
            return Err(MedicalRecordError::OtherPatient);
        }
        let content_kind = match &command {
            MedicalRecordCommand::Record { content, .. }
            | MedicalRecordCommand::Revise { content, .. } => Some(content.kind()),
            MedicalRecordCommand::EnterInError { .. } => None,
        };
        if content_kind.is_some_and(|k| !k.has_own_stream()) {
            return Err(MedicalRecordError::KeptApart);
        }
        if let MedicalRecordCommand::Record { .. } = &command {
            if self.item().is_some() {
                return Err(MedicalRecordError::ItemIdInUse);
            }
        }
        let mut events = self.record.decide_any(command)?;
        for event in &mut events {
            if let MedicalRecordEvent::ItemRecorded(recorded) = event {
                recorded.patient_id = Some(patient_id);
            }
        }
        Ok(events)
    }

    /// A record command for `content`, with no acknowledgement (no rule asks for one).
    pub fn no_acknowledgement(by: crate::patient::governance::Principal) -> Acknowledgement {
        Acknowledgement {
            by,
            allergies: Vec::new(),
        }
    }
}

impl Aggregate for ClinicalEntry {
    const TYPE: &'static str = "ClinicalEntry";
    type Command = ClinicalEntryCommand;
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
        if let MedicalRecordEvent::ItemRecorded(recorded) = &event {
            self.patient_id = recorded.patient_id.or(self.patient_id);
        }
        self.record.apply(event);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::medical_record::items::*;
    use crate::medical_record::values::{Concept, Measurement};
    use crate::medical_record::{ItemContent, ItemId};
    use crate::patient::governance::Principal;
    use crate::patient::Reason;

    fn at() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
    }

    fn glucose(value: &str) -> ItemContent {
        ItemContent::Observation(Observation {
            code: Concept::parse(
                "c",
                Some("http://loinc.org"),
                Some("2339-0"),
                Some("Glucose"),
            )
            .unwrap(),
            category: Some(ObservationCategory::Laboratory),
            status: ObservationStatus::Final,
            effective: Some(at()),
            value: Some(ObservationValue::Quantity(
                Measurement::parse("v", value, Some("mg/dL")).unwrap(),
            )),
            components: vec![],
            interpretation: None,
            reference_range: None,
            note: None,
        })
    }

    fn command(patient: u128, command: MedicalRecordCommand) -> ClinicalEntryCommand {
        ClinicalEntryCommand {
            patient_id: PatientId::new(Uuid::from_u128(patient)),
            command,
        }
    }

    fn record(content: ItemContent) -> MedicalRecordCommand {
        MedicalRecordCommand::Record {
            item_id: ItemId::new(Uuid::from_u128(9)),
            content,
            reason: None,
            acknowledgement: ClinicalEntry::no_acknowledgement(
                Principal::parse("p", "lab-1").unwrap(),
            ),
            at: at(),
        }
    }

    #[test]
    fn an_entry_holds_one_item_of_its_patient_through_the_record_lifecycle() {
        let mut entry = ClinicalEntry::default();
        for event in entry.decide(command(1, record(glucose("95")))).unwrap() {
            entry.apply(event);
        }
        assert_eq!(entry.patient_id(), Some(PatientId::new(Uuid::from_u128(1))));
        assert_eq!(
            entry.decide(command(1, record(glucose("95")))),
            Err(MedicalRecordError::ItemIdInUse)
        );
        let revise = |version, content| MedicalRecordCommand::Revise {
            item_id: ItemId::new(Uuid::from_u128(9)),
            expected_version: version,
            content,
            reason: Reason::parse("r", "transcription error").unwrap(),
            acknowledgement: ClinicalEntry::no_acknowledgement(
                Principal::parse("p", "lab-1").unwrap(),
            ),
            at: at(),
        };
        assert_eq!(
            entry.decide(command(2, revise(1, glucose("-1.5")))),
            Err(MedicalRecordError::OtherPatient)
        );
        for event in entry
            .decide(command(1, revise(1, glucose("-1.5"))))
            .unwrap()
        {
            entry.apply(event);
        }
        assert_eq!(entry.item().unwrap().version, 2);
        assert_eq!(
            entry.decide(command(1, revise(1, glucose("3")))),
            Err(MedicalRecordError::VersionMismatch { current: 2 })
        );
    }

    #[test]
    fn each_kind_is_kept_where_it_belongs() {
        let allergy = ItemContent::Allergy(Allergy {
            substance: Concept::parse("s", None, None, Some("Peanut")).unwrap(),
            category: None,
            criticality: None,
            reactions: vec![],
            clinical_status: AllergyClinicalStatus::Active,
            verification_status: None,
            onset: None,
            note: None,
        });
        assert_eq!(
            ClinicalEntry::default().decide(command(1, record(allergy))),
            Err(MedicalRecordError::KeptApart)
        );
        assert_eq!(
            MedicalRecord::default().decide(record(glucose("95"))),
            Err(MedicalRecordError::KeptApart)
        );
    }
}
