//! The patient aggregate: its state, the pure decision function and the cqrs-es adapter.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::commands::{
    ArchivePatient, CorrectDemographics, PatientCommand, RegisterPatient, RestorePatient,
};
use super::contact::{ContactInformation, Identifier};
use super::events::{
    DemographicsCorrected, PatientArchived, PatientEvent, PatientRegistered, PatientRestored,
};
use super::values::{AdministrativeGender, BirthDate, Mrn, PatientId, PersonName};
use super::PatientError;

/// A patient aggregate. `None` until registered: no command but registration is accepted
/// before that, and no event but registration can start the stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    record: Option<PatientRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientRecord {
    pub patient_id: PatientId,
    pub mrn: Mrn,
    pub name: PersonName,
    pub birth_date: Option<BirthDate>,
    pub gender: AdministrativeGender,
    pub identifiers: Vec<Identifier>,
    pub contact: ContactInformation,
    pub status: PatientStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatientStatus {
    Active,
    Archived,
}

impl PatientStatus {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }
}

impl Patient {
    /// The current record, or `None` if the patient was never registered.
    pub fn record(&self) -> Option<&PatientRecord> {
        self.record.as_ref()
    }

    /// Decides which events a command produces, or which rule it breaks. Pure and synchronous.
    ///
    /// # Errors
    ///
    /// The [`PatientError`] naming the broken rule.
    pub fn decide(&self, command: PatientCommand) -> Result<Vec<PatientEvent>, PatientError> {
        match (command, &self.record) {
            (PatientCommand::Register(cmd), None) => Ok(vec![register(cmd)]),
            (PatientCommand::Register(_), Some(_)) => Err(PatientError::AlreadyRegistered),
            (_, None) => Err(PatientError::NotRegistered),
            (PatientCommand::CorrectDemographics(cmd), Some(record)) => correct(record, cmd),
            (PatientCommand::Archive(cmd), Some(record)) => archive(record, cmd),
            (PatientCommand::Restore(cmd), Some(record)) => restore(record, cmd),
        }
    }
}

fn register(cmd: RegisterPatient) -> PatientEvent {
    PatientEvent::PatientRegistered(PatientRegistered {
        patient_id: cmd.patient_id,
        mrn: cmd.mrn,
        name: cmd.name,
        birth_date: cmd.birth_date,
        gender: cmd.gender,
        identifiers: cmd.identifiers,
        contact: cmd.contact,
        duplicate_override: cmd.duplicate_override,
        registered_at: cmd.at,
    })
}

fn correct(
    record: &PatientRecord,
    cmd: CorrectDemographics,
) -> Result<Vec<PatientEvent>, PatientError> {
    if record.status == PatientStatus::Archived {
        return Err(PatientError::ArchivedPatientCannotBeCorrected);
    }
    let name = cmd.name.unwrap_or_else(|| record.name.clone());
    let birth_date = cmd.birth_date.or(record.birth_date);
    let gender = cmd.gender.unwrap_or(record.gender);
    if name == record.name && birth_date == record.birth_date && gender == record.gender {
        return Err(PatientError::CorrectionChangesNothing);
    }
    Ok(vec![PatientEvent::DemographicsCorrected(
        DemographicsCorrected {
            name,
            birth_date,
            gender,
            reason: cmd.reason,
            corrected_at: cmd.at,
        },
    )])
}

fn archive(record: &PatientRecord, cmd: ArchivePatient) -> Result<Vec<PatientEvent>, PatientError> {
    match record.status {
        PatientStatus::Archived => Err(PatientError::AlreadyArchived),
        PatientStatus::Active => Ok(vec![PatientEvent::PatientArchived(PatientArchived {
            reason: cmd.reason,
            archived_at: cmd.at,
        })]),
    }
}

fn restore(record: &PatientRecord, cmd: RestorePatient) -> Result<Vec<PatientEvent>, PatientError> {
    match record.status {
        PatientStatus::Active => Err(PatientError::NotArchived),
        PatientStatus::Archived => Ok(vec![PatientEvent::PatientRestored(PatientRestored {
            reason: cmd.reason,
            restored_at: cmd.at,
        })]),
    }
}

impl Aggregate for Patient {
    const TYPE: &'static str = "Patient";
    type Command = PatientCommand;
    type Event = PatientEvent;
    type Error = PatientError;
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
            PatientEvent::PatientRegistered(e) => {
                self.record = Some(PatientRecord {
                    patient_id: e.patient_id,
                    mrn: e.mrn,
                    name: e.name,
                    birth_date: e.birth_date,
                    gender: e.gender,
                    identifiers: e.identifiers,
                    contact: e.contact,
                    status: PatientStatus::Active,
                });
            }
            // Events after registration are only ever stored behind a registration (decide
            // refuses every other command before it), so a missing record cannot occur on
            // replay of a stream this service wrote; ignoring is the safe reading.
            PatientEvent::DemographicsCorrected(e) => {
                if let Some(record) = &mut self.record {
                    record.name = e.name;
                    record.birth_date = e.birth_date;
                    record.gender = e.gender;
                }
            }
            PatientEvent::PatientArchived(_) => {
                if let Some(record) = &mut self.record {
                    record.status = PatientStatus::Archived;
                }
            }
            PatientEvent::PatientRestored(_) => {
                if let Some(record) = &mut self.record {
                    record.status = PatientStatus::Active;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Given/when/then over events, no IO.

    use chrono::{DateTime, NaiveDate, TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::patient::values::Reason;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
    }

    fn today() -> NaiveDate {
        at().date_naive()
    }

    fn name(given: &str, family: &str) -> PersonName {
        PersonName::parse("name", &[given.to_owned()], family).unwrap()
    }

    fn reason() -> Reason {
        Reason::parse("reason", "clerical error").unwrap()
    }

    fn registered() -> PatientEvent {
        PatientEvent::PatientRegistered(PatientRegistered {
            patient_id: PatientId::new(Uuid::from_u128(1)),
            mrn: Mrn::from_serial(1).unwrap(),
            name: name("Ada", "Lovelace"),
            birth_date: Some(BirthDate::parse("birth_date", "1990-12-10", today()).unwrap()),
            gender: AdministrativeGender::Female,
            identifiers: vec![],
            contact: ContactInformation::default(),
            duplicate_override: None,
            registered_at: at(),
        })
    }

    fn archived() -> PatientEvent {
        PatientEvent::PatientArchived(PatientArchived {
            reason: reason(),
            archived_at: at(),
        })
    }

    fn given(events: Vec<PatientEvent>) -> Patient {
        let mut patient = Patient::default();
        for event in events {
            patient.apply(event);
        }
        patient
    }

    fn register_cmd() -> PatientCommand {
        let PatientEvent::PatientRegistered(e) = registered() else {
            unreachable!("registered() builds a PatientRegistered")
        };
        PatientCommand::Register(RegisterPatient {
            patient_id: e.patient_id,
            mrn: e.mrn,
            name: e.name,
            birth_date: e.birth_date,
            gender: e.gender,
            identifiers: e.identifiers,
            contact: e.contact,
            duplicate_override: e.duplicate_override,
            at: e.registered_at,
        })
    }

    fn correct_cmd(new_name: Option<PersonName>) -> PatientCommand {
        PatientCommand::CorrectDemographics(CorrectDemographics {
            name: new_name,
            birth_date: None,
            gender: None,
            reason: reason(),
            at: at(),
        })
    }

    fn archive_cmd() -> PatientCommand {
        PatientCommand::Archive(ArchivePatient {
            reason: reason(),
            at: at(),
        })
    }

    fn restore_cmd() -> PatientCommand {
        PatientCommand::Restore(RestorePatient {
            reason: reason(),
            at: at(),
        })
    }

    #[test]
    fn registering_a_new_patient_records_patient_registered() {
        let events = given(vec![]).decide(register_cmd()).unwrap();
        assert_eq!(events, vec![registered()]);
    }

    #[test]
    fn registering_twice_is_refused() {
        let err = given(vec![registered()])
            .decide(register_cmd())
            .unwrap_err();
        assert_eq!(err, PatientError::AlreadyRegistered);
    }

    #[test]
    fn any_command_before_registration_is_refused() {
        for cmd in [
            correct_cmd(Some(name("Ada", "Byron"))),
            archive_cmd(),
            restore_cmd(),
        ] {
            assert_eq!(
                given(vec![]).decide(cmd).unwrap_err(),
                PatientError::NotRegistered
            );
        }
    }

    #[test]
    fn correcting_the_name_records_the_full_demographics_and_the_reason() {
        let patient = given(vec![registered()]);
        let events = patient
            .decide(correct_cmd(Some(name("Ada", "Byron"))))
            .unwrap();
        let [PatientEvent::DemographicsCorrected(e)] = events.as_slice() else {
            panic!("expected one DemographicsCorrected, got {events:?}");
        };
        assert_eq!(e.name, name("Ada", "Byron"));
        assert_eq!(e.gender, AdministrativeGender::Female);
        assert_eq!(e.reason, reason());
    }

    #[test]
    fn a_correction_that_changes_nothing_is_refused() {
        let patient = given(vec![registered()]);
        let err = patient
            .decide(correct_cmd(Some(name("Ada", "Lovelace"))))
            .unwrap_err();
        assert_eq!(err, PatientError::CorrectionChangesNothing);
        assert_eq!(
            patient.decide(correct_cmd(None)).unwrap_err(),
            PatientError::CorrectionChangesNothing
        );
    }

    #[test]
    fn an_archived_patient_cannot_be_corrected() {
        let err = given(vec![registered(), archived()])
            .decide(correct_cmd(Some(name("Ada", "Byron"))))
            .unwrap_err();
        assert_eq!(err, PatientError::ArchivedPatientCannotBeCorrected);
    }

    #[test]
    fn archiving_an_active_patient_records_patient_archived() {
        let events = given(vec![registered()]).decide(archive_cmd()).unwrap();
        assert_eq!(events, vec![archived()]);
    }

    #[test]
    fn archiving_twice_is_refused() {
        let err = given(vec![registered(), archived()])
            .decide(archive_cmd())
            .unwrap_err();
        assert_eq!(err, PatientError::AlreadyArchived);
    }

    #[test]
    fn restoring_an_archived_patient_makes_them_active_again() {
        let mut patient = given(vec![registered(), archived()]);
        let events = patient.decide(restore_cmd()).unwrap();
        assert!(matches!(
            events.as_slice(),
            [PatientEvent::PatientRestored(_)]
        ));
        for event in events {
            patient.apply(event);
        }
        assert_eq!(patient.record().unwrap().status, PatientStatus::Active);
    }

    #[test]
    fn restoring_an_active_patient_is_refused() {
        let err = given(vec![registered()]).decide(restore_cmd()).unwrap_err();
        assert_eq!(err, PatientError::NotArchived);
    }

    #[test]
    fn stored_events_round_trip_through_json() {
        let json = serde_json::to_value(registered()).unwrap();
        assert_eq!(json["PatientRegistered"]["gender"], "female");
        let back: PatientEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, registered());
    }
}
