//! The patient aggregate: its state, the pure decision function and the cqrs-es adapter.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::commands::{
    ArchivePatient, CorrectDemographics, PatientCommand, RecordChange, RegisterPatient,
    RestorePatient,
};
use super::contact::Identifier;
use super::events::{
    ContactInformationChanged, CoverageAdded, CoverageChanged, CoverageEnded,
    DemographicsCorrected, EmergencyContactAdded, EmergencyContactChanged, EmergencyContactRemoved,
    IdentifierAdded, IdentifierRemoved, PatientArchived, PatientEvent, PatientRegistered,
    PatientRestored, PreferencesUpdated,
};
use super::governance::{self, Governance, PatientForgotten};
use super::merge;
use super::record::{Coverage, Preferences, MAX_EMERGENCY_CONTACTS};
use super::state::{PatientRecord, PatientStatus};
use super::PatientError;

/// A patient aggregate. `None` until registered: no command but registration is accepted
/// before that, and no event but registration can start the stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    record: Option<PatientRecord>,
    /// Set once the patient is forgotten: all that is left of them.
    #[serde(default)]
    forgotten: Option<PatientForgotten>,
}

impl Patient {
    /// The current record, or `None` if the patient was never registered.
    pub fn record(&self) -> Option<&PatientRecord> {
        self.record.as_ref()
    }

    /// The fact of erasure, if the patient was forgotten.
    pub fn forgotten(&self) -> Option<&PatientForgotten> {
        self.forgotten.as_ref()
    }

    /// Decides which events a command produces, or which rule it breaks. Pure and synchronous.
    ///
    /// # Errors
    ///
    /// The [`PatientError`] naming the broken rule.
    pub fn decide(&self, command: PatientCommand) -> Result<Vec<PatientEvent>, PatientError> {
        if self.forgotten.is_some() {
            return Err(PatientError::Forgotten);
        }
        match (command, &self.record) {
            (PatientCommand::Register(cmd), None) => Ok(vec![register(cmd)]),
            (PatientCommand::Register(_), Some(_)) => Err(PatientError::AlreadyRegistered),
            (_, None) => Err(PatientError::NotRegistered),
            (PatientCommand::Unmerge { reason, at }, Some(record)) => {
                merge::unmerge(record, reason, at).map(|e| vec![e])
            }
            (
                PatientCommand::Absorb {
                    source,
                    identifiers,
                    contact,
                    reason,
                    at,
                },
                Some(record),
            ) => merge::absorb(record, source, identifiers, contact, reason, at).map(|e| vec![e]),
            (PatientCommand::Govern(change), Some(record)) => {
                governance::rules::decide(record, change).map(|e| vec![e])
            }
            (_, Some(record)) if record.status == PatientStatus::Merged => {
                Err(PatientError::MergedPatientCannotBeChanged)
            }
            (PatientCommand::MergeInto { target, reason, at }, Some(record)) => {
                merge::merge_into(record, target, reason, at).map(|e| vec![e])
            }
            (PatientCommand::RevertAbsorption { source, reason, at }, Some(record)) => {
                merge::revert_absorption(record, source, reason, at).map(|e| vec![e])
            }
            (PatientCommand::CorrectDemographics(cmd), Some(record)) => correct(record, cmd),
            (PatientCommand::Archive(cmd), Some(record)) => archive(record, cmd),
            (PatientCommand::Restore(cmd), Some(record)) => restore(record, cmd),
            (_, Some(record)) if record.status == PatientStatus::Archived => {
                Err(PatientError::ArchivedPatientCannotBeCorrected)
            }
            (PatientCommand::Change(change), Some(record)) => {
                change_record(record, change).map(|event| vec![event])
            }
        }
    }
}

/// The changes to an active patient's record other than demographics.
fn change_record(
    record: &PatientRecord,
    change: RecordChange,
) -> Result<PatientEvent, PatientError> {
    use PatientEvent as E;
    use RecordChange as C;
    Ok(match change {
        C::ChangeContactInformation { contact, at } => {
            if contact == record.contact {
                return Err(PatientError::CorrectionChangesNothing);
            }
            E::ContactInformationChanged(ContactInformationChanged {
                contact,
                changed_at: at,
            })
        }
        C::AddIdentifier { identifier, at } => {
            if record.identifiers.iter().any(|id| id.same_as(&identifier)) {
                return Err(PatientError::IdentifierAlreadyRecorded);
            }
            E::IdentifierAdded(IdentifierAdded {
                identifier,
                added_at: at,
            })
        }
        C::RemoveIdentifier(cmd) => {
            let wanted = Identifier {
                system: cmd.system,
                value: cmd.value,
                national: false,
            };
            let identifier = record
                .identifiers
                .iter()
                .find(|id| id.same_as(&wanted))
                .cloned()
                .ok_or(PatientError::IdentifierNotFound)?;
            E::IdentifierRemoved(IdentifierRemoved {
                identifier,
                reason: cmd.reason,
                removed_at: cmd.at,
            })
        }
        C::UpdatePreferences { preferences, at } => {
            if preferences == record.preferences {
                return Err(PatientError::CorrectionChangesNothing);
            }
            E::PreferencesUpdated(PreferencesUpdated {
                preferences,
                updated_at: at,
            })
        }
        C::AddEmergencyContact { contact, at } => {
            if record.emergency_contacts.len() >= MAX_EMERGENCY_CONTACTS {
                return Err(PatientError::TooManyEmergencyContacts);
            }
            if contact.phones.is_empty() {
                return Err(PatientError::EmergencyContactWithoutPhone);
            }
            if record
                .emergency_contacts
                .iter()
                .any(|c| c.contact_id == contact.contact_id)
            {
                return Err(PatientError::ItemIdInUse);
            }
            E::EmergencyContactAdded(EmergencyContactAdded {
                contact,
                added_at: at,
            })
        }
        C::ChangeEmergencyContact { contact, at } => {
            if contact.phones.is_empty() {
                return Err(PatientError::EmergencyContactWithoutPhone);
            }
            let current = record
                .emergency_contacts
                .iter()
                .find(|c| c.contact_id == contact.contact_id)
                .ok_or(PatientError::EmergencyContactNotFound)?;
            if *current == contact {
                return Err(PatientError::CorrectionChangesNothing);
            }
            E::EmergencyContactChanged(EmergencyContactChanged {
                contact,
                changed_at: at,
            })
        }
        C::RemoveEmergencyContact { contact_id, at } => {
            if !record
                .emergency_contacts
                .iter()
                .any(|c| c.contact_id == contact_id)
            {
                return Err(PatientError::EmergencyContactNotFound);
            }
            E::EmergencyContactRemoved(EmergencyContactRemoved {
                contact_id,
                removed_at: at,
            })
        }
        C::AddCoverage { mut coverage, at } => {
            if record
                .coverages
                .iter()
                .any(|c| c.coverage_id == coverage.coverage_id)
            {
                return Err(PatientError::ItemIdInUse);
            }
            // Only EndCoverage ends a coverage, with its reason.
            coverage.ended = false;
            check_coverage(record, &coverage)?;
            E::CoverageAdded(CoverageAdded {
                coverage,
                added_at: at,
            })
        }
        C::ChangeCoverage { mut coverage, at } => {
            coverage.ended = false;
            let current = record
                .coverages
                .iter()
                .find(|c| c.coverage_id == coverage.coverage_id)
                .ok_or(PatientError::CoverageNotFound)?;
            if current.ended {
                return Err(PatientError::CoverageAlreadyEnded);
            }
            if *current == coverage {
                return Err(PatientError::CorrectionChangesNothing);
            }
            check_coverage(record, &coverage)?;
            E::CoverageChanged(CoverageChanged {
                coverage,
                changed_at: at,
            })
        }
        C::EndCoverage(cmd) => {
            let current = record
                .coverages
                .iter()
                .find(|c| c.coverage_id == cmd.coverage_id)
                .ok_or(PatientError::CoverageNotFound)?;
            if current.ended {
                return Err(PatientError::CoverageAlreadyEnded);
            }
            if cmd.end < current.start {
                return Err(PatientError::CoverageEndsBeforeItStarts);
            }
            E::CoverageEnded(CoverageEnded {
                coverage_id: cmd.coverage_id,
                end: cmd.end,
                reason: cmd.reason,
                ended_at: cmd.at,
            })
        }
    })
}

/// No two coverages of the same priority may overlap in time.
fn check_coverage(record: &PatientRecord, coverage: &Coverage) -> Result<(), PatientError> {
    if coverage.end.is_some_and(|end| end < coverage.start) {
        return Err(PatientError::CoverageEndsBeforeItStarts);
    }
    let clash = record.coverages.iter().any(|other| {
        // Ended coverages count with their fixed period: one ended as of next month still
        // covers until then.
        other.coverage_id != coverage.coverage_id
            && other.priority == coverage.priority
            && other.overlaps(coverage)
    });
    if clash {
        Err(PatientError::CoverageOverlaps)
    } else {
        Ok(())
    }
}

fn register(cmd: RegisterPatient) -> PatientEvent {
    PatientEvent::PatientRegistered(PatientRegistered {
        patient_id: cmd.patient_id,
        mrn: cmd.mrn,
        name: cmd.name,
        birth_date: cmd.birth_date,
        gender: cmd.gender,
        marital_status: cmd.marital_status,
        languages: cmd.languages,
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
    let marital_status = cmd.marital_status.or(record.marital_status);
    let languages = cmd.languages.unwrap_or_else(|| record.languages.clone());
    if name == record.name
        && birth_date == record.birth_date
        && gender == record.gender
        && marital_status == record.marital_status
        && languages == record.languages
    {
        return Err(PatientError::CorrectionChangesNothing);
    }
    Ok(vec![PatientEvent::DemographicsCorrected(
        DemographicsCorrected {
            name,
            birth_date,
            gender,
            marital_status,
            languages,
            reason: cmd.reason,
            corrected_at: cmd.at,
        },
    )])
}

fn archive(record: &PatientRecord, cmd: ArchivePatient) -> Result<Vec<PatientEvent>, PatientError> {
    match record.status {
        PatientStatus::Archived => Err(PatientError::AlreadyArchived),
        PatientStatus::Merged => Err(PatientError::MergedPatientCannotBeChanged),
        PatientStatus::Active => Ok(vec![PatientEvent::PatientArchived(PatientArchived {
            reason: cmd.reason,
            archived_at: cmd.at,
        })]),
    }
}

fn restore(record: &PatientRecord, cmd: RestorePatient) -> Result<Vec<PatientEvent>, PatientError> {
    match record.status {
        PatientStatus::Active => Err(PatientError::NotArchived),
        PatientStatus::Merged => Err(PatientError::MergedPatientCannotBeChanged),
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
                    marital_status: e.marital_status,
                    languages: e.languages,
                    identifiers: e.identifiers,
                    contact: e.contact,
                    preferences: Preferences::default(),
                    emergency_contacts: Vec::new(),
                    coverages: Vec::new(),
                    status: PatientStatus::Active,
                    merged_into: None,
                    status_before_merge: None,
                    absorptions: Vec::new(),
                    governance: Governance::default(),
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
                    record.marital_status = e.marital_status;
                    record.languages = e.languages;
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
            // After erasure only this event can be read: it stands alone.
            PatientEvent::PatientForgotten(e) => {
                self.record = None;
                self.forgotten = Some(e);
            }
            other => {
                if let Some(record) = &mut self.record {
                    apply_record_change(record, other);
                }
            }
        }
    }
}

fn apply_record_change(record: &mut PatientRecord, event: PatientEvent) {
    match event {
        PatientEvent::ContactInformationChanged(e) => record.contact = e.contact,
        PatientEvent::IdentifierAdded(e) => record.identifiers.push(e.identifier),
        PatientEvent::IdentifierRemoved(e) => {
            record.identifiers.retain(|id| !id.same_as(&e.identifier))
        }
        PatientEvent::PreferencesUpdated(e) => record.preferences = e.preferences,
        PatientEvent::EmergencyContactAdded(e) => record.emergency_contacts.push(e.contact),
        PatientEvent::EmergencyContactChanged(e) => {
            for c in &mut record.emergency_contacts {
                if c.contact_id == e.contact.contact_id {
                    *c = e.contact.clone();
                }
            }
        }
        PatientEvent::EmergencyContactRemoved(e) => {
            record
                .emergency_contacts
                .retain(|c| c.contact_id != e.contact_id);
        }
        PatientEvent::CoverageAdded(e) => record.coverages.push(e.coverage),
        PatientEvent::CoverageChanged(e) => {
            for c in &mut record.coverages {
                if c.coverage_id == e.coverage.coverage_id {
                    *c = e.coverage.clone();
                }
            }
        }
        PatientEvent::CoverageEnded(e) => {
            for c in &mut record.coverages {
                if c.coverage_id == e.coverage_id {
                    c.end = Some(e.end);
                    c.ended = true;
                }
            }
        }
        merge @ (PatientEvent::PatientMerged(_)
        | PatientEvent::PatientAbsorbed(_)
        | PatientEvent::PatientUnmerged(_)
        | PatientEvent::AbsorptionReverted(_)) => merge::apply(record, merge),
        governance @ (PatientEvent::CareRelationshipStarted(_)
        | PatientEvent::CareRelationshipEnded(_)
        | PatientEvent::ConsentGranted(_)
        | PatientEvent::ConsentWithdrawn(_)
        | PatientEvent::LegalHoldPlaced(_)
        | PatientEvent::LegalHoldReleased(_)) => governance::rules::apply(record, governance),
        PatientEvent::PatientRegistered(_)
        | PatientEvent::DemographicsCorrected(_)
        | PatientEvent::PatientArchived(_)
        | PatientEvent::PatientRestored(_)
        | PatientEvent::PatientForgotten(_) => {}
    }
}

#[cfg(test)]
mod tests {
    //! Given/when/then over events, no IO.

    use chrono::{DateTime, NaiveDate, TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::patient::contact::{ContactInformation, Phone, PhoneNumber, PhoneUse};
    use crate::patient::events::PatientMerged;
    use crate::patient::record::EmergencyContact;
    use crate::patient::record::{CoveragePriority, Relationship, SubscriberRelationship};
    use crate::patient::values::Reason;
    use crate::patient::values::{AdministrativeGender, BirthDate, Mrn, PatientId, PersonName};

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
            marital_status: None,
            languages: vec![],
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
            marital_status: e.marital_status,
            languages: e.languages,
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
            marital_status: None,
            languages: None,
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

    fn record_change(change: RecordChange) -> PatientCommand {
        PatientCommand::Change(change)
    }

    fn identifier(value: &str) -> Identifier {
        Identifier::parse("i", "urn:example", value, false).unwrap()
    }

    fn coverage(id: u128, priority: CoveragePriority, start: &str, end: Option<&str>) -> Coverage {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        Coverage {
            coverage_id: Uuid::from_u128(id),
            payer: "Helsana".into(),
            plan: None,
            member_id: "M-1".into(),
            group: None,
            subscriber_name: None,
            relationship: SubscriberRelationship::Myself,
            start: d(start),
            end: end.map(d),
            priority,
            ended: false,
        }
    }

    fn coverage_added(c: Coverage) -> PatientEvent {
        PatientEvent::CoverageAdded(CoverageAdded {
            coverage: c,
            added_at: at(),
        })
    }

    #[test]
    fn an_identifier_already_recorded_is_refused_and_an_unknown_one_cannot_be_removed() {
        let with_id = given(vec![
            registered(),
            PatientEvent::IdentifierAdded(IdentifierAdded {
                identifier: identifier("A-1"),
                added_at: at(),
            }),
        ]);
        let again = record_change(RecordChange::AddIdentifier {
            identifier: identifier("a1"),
            at: at(),
        });
        assert_eq!(
            with_id.decide(again).unwrap_err(),
            PatientError::IdentifierAlreadyRecorded
        );
        let remove = record_change(RecordChange::RemoveIdentifier(
            crate::patient::RemoveIdentifier {
                system: "urn:example".into(),
                value: "B-2".into(),
                reason: reason(),
                at: at(),
            },
        ));
        assert_eq!(
            with_id.decide(remove).unwrap_err(),
            PatientError::IdentifierNotFound
        );
    }

    #[test]
    fn two_active_coverages_of_one_priority_may_not_overlap() {
        let patient = given(vec![
            registered(),
            coverage_added(coverage(1, CoveragePriority::Primary, "2026-01-01", None)),
        ]);
        let clash = coverage(
            2,
            CoveragePriority::Primary,
            "2026-06-01",
            Some("2026-12-31"),
        );
        let add = |c| {
            record_change(RecordChange::AddCoverage {
                coverage: c,
                at: at(),
            })
        };
        assert_eq!(
            patient.decide(add(clash)).unwrap_err(),
            PatientError::CoverageOverlaps
        );
        let secondary = coverage(3, CoveragePriority::Secondary, "2026-06-01", None);
        assert!(patient.decide(add(secondary)).is_ok());
        let before = coverage(
            4,
            CoveragePriority::Primary,
            "2025-01-01",
            Some("2025-12-31"),
        );
        assert!(patient.decide(add(before)).is_ok());
    }

    #[test]
    fn an_ended_coverage_stays_on_record_and_frees_its_priority() {
        let mut patient = given(vec![
            registered(),
            coverage_added(coverage(1, CoveragePriority::Primary, "2026-01-01", None)),
        ]);
        let end = |day: &str| {
            record_change(RecordChange::EndCoverage(crate::patient::EndCoverage {
                coverage_id: Uuid::from_u128(1),
                end: NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap(),
                reason: reason(),
                at: at(),
            }))
        };
        assert_eq!(
            patient.decide(end("2025-12-31")).unwrap_err(),
            PatientError::CoverageEndsBeforeItStarts
        );
        for event in patient.decide(end("2026-06-30")).unwrap() {
            patient.apply(event);
        }
        let record = patient.record().unwrap();
        assert!(record.coverages[0].ended);
        assert_eq!(
            patient.decide(end("2026-07-01")).unwrap_err(),
            PatientError::CoverageAlreadyEnded
        );
        let next = coverage(2, CoveragePriority::Primary, "2026-07-01", None);
        assert!(patient
            .decide(record_change(RecordChange::AddCoverage {
                coverage: next,
                at: at()
            }))
            .is_ok());
    }

    #[test]
    fn emergency_contacts_must_exist_to_change_and_are_limited_in_number() {
        let contact = |id: u128| EmergencyContact {
            contact_id: Uuid::from_u128(id),
            name: name("Charles", "Babbage"),
            relationship: Relationship::Friend,
            phones: vec![Phone {
                number: PhoneNumber::parse("p", "+441632960000").unwrap(),
                phone_use: PhoneUse::Mobile,
                preferred: true,
            }],
        };
        let mut events = vec![registered()];
        for id in 0..MAX_EMERGENCY_CONTACTS as u128 {
            events.push(PatientEvent::EmergencyContactAdded(EmergencyContactAdded {
                contact: contact(id),
                added_at: at(),
            }));
        }
        let patient = given(events);
        let add = record_change(RecordChange::AddEmergencyContact {
            contact: contact(99),
            at: at(),
        });
        assert_eq!(
            patient.decide(add).unwrap_err(),
            PatientError::TooManyEmergencyContacts
        );
        let change = record_change(RecordChange::ChangeEmergencyContact {
            contact: contact(99),
            at: at(),
        });
        assert_eq!(
            patient.decide(change).unwrap_err(),
            PatientError::EmergencyContactNotFound
        );
        let remove = record_change(RecordChange::RemoveEmergencyContact {
            contact_id: Uuid::from_u128(3),
            at: at(),
        });
        assert!(patient.decide(remove).is_ok());
    }

    #[test]
    fn an_archived_patients_record_cannot_be_changed() {
        let patient = given(vec![registered(), archived()]);
        let change = record_change(RecordChange::UpdatePreferences {
            preferences: Preferences {
                reminder_opt_in: true,
                ..Preferences::default()
            },
            at: at(),
        });
        assert_eq!(
            patient.decide(change).unwrap_err(),
            PatientError::ArchivedPatientCannotBeCorrected
        );
    }

    #[test]
    fn an_update_that_changes_nothing_is_refused() {
        let patient = given(vec![registered()]);
        let same = record_change(RecordChange::UpdatePreferences {
            preferences: Preferences::default(),
            at: at(),
        });
        assert_eq!(
            patient.decide(same).unwrap_err(),
            PatientError::CorrectionChangesNothing
        );
    }

    fn merged_into(target: u128) -> PatientEvent {
        PatientEvent::PatientMerged(PatientMerged {
            target_id: PatientId::new(Uuid::from_u128(target)),
            previous_status: PatientStatus::Active,
            reason: reason(),
            merged_at: at(),
        })
    }

    #[test]
    fn a_patient_cannot_be_merged_into_themselves_or_twice() {
        let own_id = PatientId::new(Uuid::from_u128(1));
        let merge = |target| PatientCommand::MergeInto {
            target,
            reason: reason(),
            at: at(),
        };
        assert_eq!(
            given(vec![registered()]).decide(merge(own_id)).unwrap_err(),
            PatientError::MergeIntoSelf
        );
        let merged = given(vec![registered(), merged_into(2)]);
        let other = PatientId::new(Uuid::from_u128(3));
        assert_eq!(
            merged.decide(merge(other)).unwrap_err(),
            PatientError::MergedPatientCannotBeChanged
        );
        let correct = correct_cmd(Some(name("Ada", "Byron")));
        assert_eq!(
            merged.decide(correct).unwrap_err(),
            PatientError::MergedPatientCannotBeChanged
        );
    }

    #[test]
    fn an_archived_or_merged_survivor_refuses_to_absorb() {
        let absorb = PatientCommand::Absorb {
            source: PatientId::new(Uuid::from_u128(9)),
            identifiers: vec![],
            contact: ContactInformation::default(),
            reason: reason(),
            at: at(),
        };
        assert_eq!(
            given(vec![registered(), archived()])
                .decide(absorb.clone())
                .unwrap_err(),
            PatientError::TargetArchived
        );
        assert_eq!(
            given(vec![registered(), merged_into(2)])
                .decide(absorb)
                .unwrap_err(),
            PatientError::TargetMergedAway
        );
    }

    #[test]
    fn a_survivor_gains_only_what_it_lacks_and_gives_it_back_on_unmerge() {
        let mut survivor = given(vec![
            registered(),
            PatientEvent::IdentifierAdded(IdentifierAdded {
                identifier: identifier("A-1"),
                added_at: at(),
            }),
        ]);
        let source = PatientId::new(Uuid::from_u128(9));
        let absorb = PatientCommand::Absorb {
            source,
            identifiers: vec![identifier("a1"), identifier("B-2")],
            contact: ContactInformation::default(),
            reason: reason(),
            at: at(),
        };
        for event in survivor.decide(absorb).unwrap() {
            survivor.apply(event);
        }
        let ids: Vec<_> = survivor
            .record()
            .unwrap()
            .identifiers
            .iter()
            .map(|i| i.value.clone())
            .collect();
        assert_eq!(ids, ["A-1", "B-2"]);
        let revert = PatientCommand::RevertAbsorption {
            source,
            reason: reason(),
            at: at(),
        };
        for event in survivor.decide(revert).unwrap() {
            survivor.apply(event);
        }
        let ids: Vec<_> = survivor
            .record()
            .unwrap()
            .identifiers
            .iter()
            .map(|i| i.value.clone())
            .collect();
        assert_eq!(ids, ["A-1"]);
    }

    #[test]
    fn unmerge_restores_the_status_before_the_merge() {
        let mut source = given(vec![registered(), archived()]);
        let merge = PatientCommand::MergeInto {
            target: PatientId::new(Uuid::from_u128(2)),
            reason: reason(),
            at: at(),
        };
        for event in source.decide(merge).unwrap() {
            source.apply(event);
        }
        assert_eq!(source.record().unwrap().status, PatientStatus::Merged);
        for event in source
            .decide(PatientCommand::Unmerge {
                reason: reason(),
                at: at(),
            })
            .unwrap()
        {
            source.apply(event);
        }
        assert_eq!(source.record().unwrap().status, PatientStatus::Archived);
        let again = source.decide(PatientCommand::Unmerge {
            reason: reason(),
            at: at(),
        });
        assert_eq!(again.unwrap_err(), PatientError::NotMerged);
    }

    #[test]
    fn a_survivor_of_earlier_merges_is_not_merged_away() {
        let absorbed = PatientEvent::PatientAbsorbed(crate::patient::PatientAbsorbed {
            source_id: PatientId::new(Uuid::from_u128(9)),
            gained_identifiers: vec![],
            gained_contact: ContactInformation::default(),
            reason: reason(),
            absorbed_at: at(),
        });
        let survivor = given(vec![registered(), absorbed]);
        let merge = PatientCommand::MergeInto {
            target: PatientId::new(Uuid::from_u128(3)),
            reason: reason(),
            at: at(),
        };
        assert_eq!(
            survivor.decide(merge).unwrap_err(),
            PatientError::HasMergedDuplicates
        );
    }

    #[test]
    fn a_coverage_ended_in_the_future_still_holds_its_priority_until_then() {
        let mut patient = given(vec![
            registered(),
            coverage_added(coverage(1, CoveragePriority::Primary, "2026-01-01", None)),
        ]);
        let end = record_change(RecordChange::EndCoverage(crate::patient::EndCoverage {
            coverage_id: Uuid::from_u128(1),
            end: NaiveDate::parse_from_str("2026-12-31", "%Y-%m-%d").unwrap(),
            reason: reason(),
            at: at(),
        }));
        for event in patient.decide(end).unwrap() {
            patient.apply(event);
        }
        let during = coverage(2, CoveragePriority::Primary, "2026-12-01", None);
        let add = record_change(RecordChange::AddCoverage {
            coverage: during,
            at: at(),
        });
        assert_eq!(
            patient.decide(add).unwrap_err(),
            PatientError::CoverageOverlaps
        );
    }

    #[test]
    fn stored_events_round_trip_through_json() {
        let json = serde_json::to_value(registered()).unwrap();
        assert_eq!(json["PatientRegistered"]["gender"], "female");
        let back: PatientEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, registered());
    }
}
