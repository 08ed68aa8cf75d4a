//! A mixed event store in the proportions a clinic produces, for the rebuild benchmark. Per
//! patient, about [`EVENTS_PER_PATIENT`] events:
//!
//! - one registration and three changes (two identifiers added, the contact changed);
//! - thirty clinical items of every kind and six revisions of them;
//! - an appointment booked (claiming its time, as the booking use case does), arrived, checked
//!   in and fulfilled, with the two reminders it causes;
//! - an access entry for every write and for ten reads.
//!
//! Everything goes through the stores' own append path (cqrs-es, sealed with the patient's
//! data key, hash-chained), eight writers side by side; nothing is written to the tables
//! directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::medical_record::{Acknowledgement, ItemId, MedicalRecordCommand};
use domain::patient::contact::{ContactInformation, Email, EmailAddress, Identifier};
use domain::patient::governance::Principal;
use domain::patient::{
    AdministrativeGender, BirthDate, PatientCommand, PatientId, PersonName, Reason, RecordChange,
    RegisterPatient,
};
use domain::scheduling::appointment::{Booking, NewAppointment};
use domain::scheduling::notification::NotificationEvent;
use domain::scheduling::{AppointmentCommand, Interval, Priority};
use event_store::command::CommandMetadata;
use event_store::records::MedicalRecordStore;
use event_store::schedule::{self, AppointmentStore, Claim, ClaimChange};
use event_store::store::PatientStore;
use schemas::access::v1::AccessEntry;
use uuid::Uuid;

use command_api::configuration::Secrets;

use crate::bench_records::{item, CLINICIAN};

/// About how many events one patient of the mixed store leaves (the exact count varies with
/// nothing: see the module docs).
pub const EVENTS_PER_PATIENT: usize = 1 + 3 + ITEMS + REVISIONS + 4 + 2 + ACCESS_ENTRIES;

const ITEMS: usize = 30;
const REVISIONS: usize = 6;
const READS: usize = 10;
/// One per write (registration, changes, items, revisions, appointment steps) and per read.
const ACCESS_ENTRIES: usize = 1 + 3 + ITEMS + REVISIONS + 4 + READS;
/// Practitioners the appointments are spread over; each has one patient per half hour.
const PRACTITIONERS: usize = 50;
const WRITERS: usize = 8;

/// Appends the histories of `patients` new patients (numbered from `first`, for synthetic
/// names); returns how many events were appended.
///
/// # Errors
///
/// The first command the store refuses or fails.
pub async fn generate(
    pool: &sqlx::PgPool,
    secrets: &Secrets,
    (first, patients): (usize, usize),
) -> anyhow::Result<usize> {
    let stores = Arc::new(Stores {
        pool: pool.clone(),
        chain: secrets.chain.clone(),
        patients: PatientStore::new(pool.clone(), secrets.keys.clone(), secrets.chain.clone()),
        records: MedicalRecordStore::new(pool.clone(), secrets.keys.clone(), secrets.chain.clone()),
        appointments: AppointmentStore::new(
            pool.clone(),
            secrets.keys.clone(),
            secrets.chain.clone(),
        ),
    });
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + patients;
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (stores, next) = (stores.clone(), next.clone());
        writers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return Ok::<_, anyhow::Error>(());
                }
                stores.patient_history(n).await?;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(after - before)?)
}

struct Stores {
    pool: sqlx::PgPool,
    chain: event_store::chain::ChainKey,
    patients: PatientStore,
    records: MedicalRecordStore,
    appointments: AppointmentStore,
}

fn failed(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn metadata() -> CommandMetadata {
    CommandMetadata {
        user_id: CLINICIAN.into(),
        ..CommandMetadata::default()
    }
}

/// Where patient `n`'s appointment is: its practitioner's next half hour, in 2025 (so that
/// it can have happened).
fn appointment_slot(n: usize) -> (String, Interval) {
    let practitioner = format!("mixed-store-practitioner-{}", n % PRACTITIONERS);
    let start = Utc
        .with_ymd_and_hms(2025, 1, 6, 0, 0, 0)
        .single()
        .unwrap_or_default()
        + Duration::minutes(30 * (n / PRACTITIONERS) as i64);
    (
        practitioner,
        Interval::new(start, start + Duration::minutes(30)),
    )
}

impl Stores {
    async fn patient_history(&self, n: usize) -> anyhow::Result<()> {
        let id = PatientId::new(Uuid::new_v4());
        let now = Utc::now();
        self.register(id, n, now).await?;
        self.change(id, n, now).await?;
        self.chart(id, n, now).await?;
        self.appointment(id, n).await?;
        let entries: Vec<AccessEntry> = (0..ACCESS_ENTRIES)
            .map(|k| AccessEntry {
                entry_id: Uuid::new_v4(),
                patient_id: id.as_uuid(),
                user_id: CLINICIAN.into(),
                roles: vec!["clinician".into()],
                organization: None,
                action: if k < ACCESS_ENTRIES - READS {
                    "record-write".into()
                } else {
                    "record-read".into()
                },
                purpose: "treatment".into(),
                outcome: "granted".into(),
                emergency_reason: None,
                request_id: None,
                accessed_at: now,
            })
            .collect();
        event_store::access::record(&self.pool, &self.chain, (&entries, None)).await?;
        Ok(())
    }

    async fn register(&self, id: PatientId, n: usize, at: DateTime<Utc>) -> anyhow::Result<()> {
        let (given, family, birth_date) = synthetic::person(n as u64 + 7_000_000);
        let command = PatientCommand::Register(RegisterPatient {
            patient_id: id,
            mrn: self.patients.next_mrn().await.map_err(failed)?,
            name: PersonName::parse("name", &[given], &family).map_err(failed)?,
            birth_date: Some(
                BirthDate::parse("birth_date", &birth_date.to_string(), at.date_naive())
                    .map_err(failed)?,
            ),
            gender: if n % 2 == 0 {
                AdministrativeGender::Female
            } else {
                AdministrativeGender::Male
            },
            marital_status: None,
            languages: vec![],
            identifiers: vec![],
            contact: ContactInformation::default(),
            duplicate_override: None,
            at,
        });
        self.patients
            .execute(id, None, command, metadata())
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn change(&self, id: PatientId, n: usize, at: DateTime<Utc>) -> anyhow::Result<()> {
        let mut changes: Vec<RecordChange> = (0..2)
            .map(|k| RecordChange::AddIdentifier {
                identifier: Identifier {
                    system: "urn:example:mixed-store".into(),
                    value: format!("MS-{n}-{k}"),
                    national: false,
                },
                at,
            })
            .collect();
        changes.push(RecordChange::ChangeContactInformation {
            contact: ContactInformation {
                emails: vec![Email {
                    address: EmailAddress::parse("email", &format!("patient{n}@example.org"))
                        .map_err(failed)?,
                    preferred: true,
                }],
                ..ContactInformation::default()
            },
            at,
        });
        for change in changes {
            self.patients
                .execute(id, None, PatientCommand::Change(change), metadata())
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    async fn chart(&self, id: PatientId, n: usize, at: DateTime<Utc>) -> anyhow::Result<()> {
        let acknowledgement = || -> anyhow::Result<Acknowledgement> {
            Ok(Acknowledgement {
                by: Principal::parse("by", CLINICIAN).map_err(failed)?,
                allergies: vec![],
            })
        };
        let mut recorded = Vec::with_capacity(ITEMS);
        for i in 0..ITEMS {
            let item_id = ItemId::new(Uuid::new_v4());
            let command = MedicalRecordCommand::Record {
                item_id,
                content: item(i, n),
                reason: None,
                acknowledgement: acknowledgement()?,
                at,
            };
            self.records
                .execute(id, command, metadata())
                .await
                .map_err(failed)?;
            recorded.push(item_id);
        }
        // Allergies and medications, whose concepts are named by their number: each revision
        // is an item of the same kind (every tenth is) with a concept no other item has.
        let revised = (0..ITEMS).filter(|i| i % 10 < 4).take(REVISIONS);
        for i in revised {
            let item_id = recorded[i];
            let command = MedicalRecordCommand::Revise {
                item_id,
                expected_version: 1,
                content: item(i + 100 * ITEMS, n),
                reason: Reason::parse("reason", "corrected at review").map_err(failed)?,
                acknowledgement: acknowledgement()?,
                at,
            };
            self.records
                .execute(id, command, metadata())
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    async fn appointment(&self, patient: PatientId, n: usize) -> anyhow::Result<()> {
        let id = Uuid::new_v4();
        let (practitioner, interval) = appointment_slot(n);
        let booked_at = interval.start - Duration::days(7);
        let booking = Booking {
            interval,
            resources: vec![practitioner.clone()],
        };
        let claims = ClaimChange {
            appointment_id: id,
            release: false,
            claim: Some(Claim {
                keys: schedule::claim_keys(&booking.resources, patient),
                interval,
                expires_at: None,
            }),
            now: booked_at,
            reminders: None,
            waitlist: None,
            notification: None,
        };
        let new = NewAppointment {
            patient_id: patient,
            service: "mixed-store-visit".into(),
            priority: Priority::Routine,
            at: booked_at,
        };
        let steps = [
            (AppointmentCommand::Book { new, booking }, Some(claims)),
            (
                AppointmentCommand::Arrive {
                    at: interval.start - Duration::minutes(10),
                },
                None,
            ),
            (AppointmentCommand::CheckIn { at: interval.start }, None),
            (AppointmentCommand::Fulfil { at: interval.end }, None),
        ];
        for (command, claims) in steps {
            self.appointments
                .execute(id, patient, None, command, claims, metadata())
                .await
                .map_err(failed)?;
        }
        for offset_minutes in [24 * 60, 2 * 60] {
            let reminder = NotificationEvent::AppointmentReminder {
                patient_id: patient,
                appointment_id: id,
                channel: None,
                starts_at: interval.start,
                offset_minutes,
                at: interval.start - Duration::minutes(i64::from(offset_minutes)),
            };
            self.appointments
                .notify(Uuid::new_v4(), patient, reminder)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appointments_of_one_practitioner_never_overlap() {
        let slots: Vec<(String, Interval)> = (0..500).map(appointment_slot).collect();
        for (i, (practitioner, interval)) in slots.iter().enumerate() {
            for (other, other_interval) in &slots[i + 1..] {
                assert!(
                    practitioner != other
                        || interval.end <= other_interval.start
                        || other_interval.end <= interval.start
                );
            }
        }
    }

    #[test]
    fn every_revision_changes_its_item() {
        let revised: Vec<usize> = (0..ITEMS).filter(|i| i % 10 < 4).take(REVISIONS).collect();
        assert_eq!(revised.len(), REVISIONS);
        for i in revised {
            assert_ne!(item(i, 7), item(i + 100 * ITEMS, 7), "item {i}");
        }
    }

    #[test]
    fn a_patient_leaves_about_a_hundred_events() {
        assert_eq!(EVENTS_PER_PATIENT, 100);
    }
}
