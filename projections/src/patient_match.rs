//! The `patient_match` read model: the matcher's view of every patient and their blocking
//! keys, kept current from the patient topic like any other read model, so duplicate
//! detection sees corrections as soon as search does.

use chrono::{DateTime, Utc};
use domain::matching::MatchRecord;
use schemas::patient::v1;
use schemas::PublishedEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{ProjectionError, ReadModel};

#[derive(Debug, Clone, Copy, Default)]
pub struct PatientMatch;

/// The matcher's record of a registration, as published.
pub fn record_of(e: &v1::PatientRegistered) -> MatchRecord {
    let mut record = MatchRecord::new(&e.name.given, &e.name.family, e.birth_date);
    for id in &e.identifiers {
        record = record.with_identifier(&id.system, &id.value, id.national);
    }
    with_contact(record, &e.contact)
}

/// `record` with the phones, e-mail addresses and preferred address of `contact`.
fn with_contact(old: MatchRecord, contact: &v1::ContactInformation) -> MatchRecord {
    let mut record = MatchRecord::default();
    for phone in &contact.phones {
        record = record.with_phone(&phone.number);
    }
    for email in &contact.emails {
        record = record.with_email(&email.address);
    }
    if let Some(address) = contact.addresses.iter().find(|a| a.preferred) {
        record = record.with_address(
            &address.lines,
            address.city.as_deref().unwrap_or_default(),
            address.postal_code.as_deref().unwrap_or_default(),
            address.state.as_deref().unwrap_or_default(),
        );
    }
    MatchRecord {
        given: old.given,
        family: old.family,
        birth_date: old.birth_date,
        national_ids: old.national_ids,
        identifiers: old.identifiers,
        ..record
    }
}

/// A record that no longer decodes. serde's own message would quote the offending value,
/// which is patient data; this one says only what failed.
fn undecodable() -> sqlx::Error {
    sqlx::Error::Decode("a match record does not decode".into())
}

async fn store(
    tx: &mut PgConnection,
    patient_id: Uuid,
    record: &MatchRecord,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let json = serde_json::to_value(record)
        .map_err(|_| sqlx::Error::Encode("a match record does not encode".into()))?;
    sqlx::query(
        "INSERT INTO patient_match (patient_id, record, status, updated_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (patient_id) DO UPDATE
            SET record = EXCLUDED.record, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
    )
    .bind(patient_id)
    .bind(json)
    .bind(status)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM patient_match_keys WHERE patient_id = $1")
        .bind(patient_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO patient_match_keys (key, patient_id)
         SELECT key, $2 FROM unnest($1::text[]) AS key ON CONFLICT DO NOTHING",
    )
    .bind(record.blocking_keys())
    .bind(patient_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn load(
    tx: &mut PgConnection,
    patient_id: Uuid,
) -> Result<Option<(MatchRecord, String)>, sqlx::Error> {
    let row: Option<(serde_json::Value, String)> =
        sqlx::query_as("SELECT record, status FROM patient_match WHERE patient_id = $1")
            .bind(patient_id)
            .fetch_optional(&mut *tx)
            .await?;
    row.map(|(json, status)| {
        serde_json::from_value(json)
            .map(|record| (record, status))
            .map_err(|_| undecodable())
    })
    .transpose()
}

impl ReadModel for PatientMatch {
    fn name(&self) -> &'static str {
        "patient_match"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[schemas::topics::PATIENT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["patient_match", "patient_match_keys"]
    }

    fn partitions_by_patient(&self) -> bool {
        true
    }

    fn indexes_for_writes(&self) -> &'static [&'static str] {
        // By patient: a patient's keys are replaced on every change.
        &["patient_match_keys_patient"]
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &PublishedEvent,
    ) -> Result<(), ProjectionError> {
        apply_event(tx, v1::PatientEvent::from_published(event)?).await
    }

    /// Runs of registrations are stored in three statements whatever their length; other
    /// events one by one, in order.
    async fn apply_many(
        &self,
        tx: &mut PgConnection,
        events: &[&PublishedEvent],
    ) -> Result<(), ProjectionError> {
        let mut registered = Vec::new();
        for event in events {
            match v1::PatientEvent::from_published(event)? {
                v1::PatientEvent::Registered(e) => registered.push(e),
                other => {
                    register_all(tx, &std::mem::take(&mut registered)).await?;
                    apply_event(tx, other).await?;
                }
            }
        }
        register_all(tx, &registered).await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM patient_match_keys")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM patient_match")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Stores the match records of registrations (of different patients) in one statement per
/// table.
async fn register_all(
    tx: &mut PgConnection,
    registered: &[v1::PatientRegistered],
) -> Result<(), sqlx::Error> {
    if registered.is_empty() {
        return Ok(());
    }
    let records: Vec<MatchRecord> = registered.iter().map(record_of).collect();
    let ids: Vec<Uuid> = registered.iter().map(|e| e.patient_id).collect();
    let json = records
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| sqlx::Error::Encode("a match record does not encode".into()))?;
    let at: Vec<DateTime<Utc>> = registered.iter().map(|e| e.registered_at).collect();
    sqlx::query(
        "INSERT INTO patient_match (patient_id, record, status, updated_at)
         SELECT id, record, 'active', at FROM unnest($1::uuid[], $2::jsonb[], $3::timestamptz[])
             AS r(id, record, at)
         ON CONFLICT (patient_id) DO UPDATE
            SET record = EXCLUDED.record, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
    )
    .bind(&ids)
    .bind(&json)
    .bind(&at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM patient_match_keys WHERE patient_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let (keys, owners): (Vec<String>, Vec<Uuid>) = records
        .iter()
        .zip(&ids)
        .flat_map(|(record, id)| record.blocking_keys().into_iter().map(move |k| (k, *id)))
        .unzip();
    sqlx::query(
        "INSERT INTO patient_match_keys (key, patient_id)
         SELECT * FROM unnest($1::text[], $2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(keys)
    .bind(owners)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Applies one decoded patient event.
async fn apply_event(
    tx: &mut PgConnection,
    event: v1::PatientEvent,
) -> Result<(), ProjectionError> {
    match event {
        v1::PatientEvent::Registered(e) => {
            register_all(tx, &[e]).await?;
        }
        v1::PatientEvent::DemographicsCorrected(e) => {
            if let Some((old, status)) = load(tx, e.patient_id).await? {
                let renamed = MatchRecord::new(&e.name.given, &e.name.family, e.birth_date);
                let record = MatchRecord {
                    given: renamed.given,
                    family: renamed.family,
                    birth_date: renamed.birth_date,
                    ..old
                };
                store(tx, e.patient_id, &record, &status, e.corrected_at).await?;
            }
        }
        v1::PatientEvent::Archived(e) => {
            set_status(tx, e.patient_id, "archived").await?;
        }
        v1::PatientEvent::Restored(e) => {
            set_status(tx, e.patient_id, "active").await?;
        }
        v1::PatientEvent::ContactInformationChanged(e) => {
            if let Some((old, status)) = load(tx, e.patient_id).await? {
                store(
                    tx,
                    e.patient_id,
                    &with_contact(old, &e.contact),
                    &status,
                    e.changed_at,
                )
                .await?;
            }
        }
        v1::PatientEvent::IdentifierAdded(e) => {
            if let Some((old, status)) = load(tx, e.patient_id).await? {
                let id = &e.identifier;
                let record = old.with_identifier(&id.system, &id.value, id.national);
                store(tx, e.patient_id, &record, &status, e.added_at).await?;
            }
        }
        v1::PatientEvent::IdentifierRemoved(e) => {
            if let Some((mut record, status)) = load(tx, e.patient_id).await? {
                let id = &e.identifier;
                let gone =
                    MatchRecord::default().with_identifier(&id.system, &id.value, id.national);
                record
                    .national_ids
                    .retain(|n| !gone.national_ids.contains(n));
                record.identifiers.retain(|i| !gone.identifiers.contains(i));
                store(tx, e.patient_id, &record, &status, e.removed_at).await?;
            }
        }
        v1::PatientEvent::Merged(e) => set_status(tx, e.patient_id, "merged").await?,
        v1::PatientEvent::Unmerged(e) => set_status(tx, e.patient_id, &e.status).await?,
        v1::PatientEvent::Absorbed(e) => {
            if let Some((mut record, status)) = load(tx, e.patient_id).await? {
                for id in &e.gained_identifiers {
                    record = record.with_identifier(&id.system, &id.value, id.national);
                }
                for phone in &e.gained_contact.phones {
                    record = record.with_phone(&phone.number);
                }
                for email in &e.gained_contact.emails {
                    record = record.with_email(&email.address);
                }
                store(tx, e.patient_id, &record, &status, e.absorbed_at).await?;
            }
        }
        v1::PatientEvent::AbsorptionReverted(e) => {
            if let Some((mut record, status)) = load(tx, e.patient_id).await? {
                let mut gone = MatchRecord::default();
                for id in &e.removed_identifiers {
                    gone = gone.with_identifier(&id.system, &id.value, id.national);
                }
                for phone in &e.removed_contact.phones {
                    gone = gone.with_phone(&phone.number);
                }
                for email in &e.removed_contact.emails {
                    gone = gone.with_email(&email.address);
                }
                record
                    .national_ids
                    .retain(|x| !gone.national_ids.contains(x));
                record.identifiers.retain(|x| !gone.identifiers.contains(x));
                record.phones.retain(|x| !gone.phones.contains(x));
                record.emails.retain(|x| !gone.emails.contains(x));
                store(tx, e.patient_id, &record, &status, e.reverted_at).await?;
            }
        }
        // Preferences, emergency contacts and coverages say nothing about who someone is.
        v1::PatientEvent::PreferencesUpdated(_)
        | v1::PatientEvent::EmergencyContactAdded(_)
        | v1::PatientEvent::EmergencyContactChanged(_)
        | v1::PatientEvent::EmergencyContactRemoved(_)
        | v1::PatientEvent::CoverageAdded(_)
        | v1::PatientEvent::CoverageChanged(_)
        | v1::PatientEvent::CoverageEnded(_)
        | v1::PatientEvent::CareRelationshipStarted(_)
        | v1::PatientEvent::CareRelationshipEnded(_)
        | v1::PatientEvent::ConsentGranted(_)
        | v1::PatientEvent::ConsentWithdrawn(_)
        | v1::PatientEvent::LegalHoldPlaced(_)
        | v1::PatientEvent::LegalHoldReleased(_) => {}
        // Erased: the patient can no longer be anyone's duplicate.
        v1::PatientEvent::Forgotten(e) => {
            for table in ["patient_match_keys", "patient_match"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE patient_id = $1"))
                    .bind(e.patient_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    Ok(())
}

async fn set_status(
    tx: &mut PgConnection,
    patient_id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE patient_match SET status = $2 WHERE patient_id = $1")
        .bind(patient_id)
        .bind(status)
        .execute(&mut *tx)
        .await
        .map(|_| ())
}

/// Every patient sharing a blocking key with `record`, with their match record and status.
///
/// # Errors
///
/// The database error.
pub async fn candidates(
    pool: &PgPool,
    record: &MatchRecord,
) -> Result<Vec<(Uuid, MatchRecord, String)>, sqlx::Error> {
    let rows: Vec<(Uuid, serde_json::Value, String)> = sqlx::query_as(
        // The keys drive, each candidate read by its primary key. Asked as a join (or as
        // `IN (...)`), the planner may hash the keys' few patients and scan the whole model
        // for them, which costs in proportion to the population on every registration; the
        // `LIMIT 1` (one row per patient in any case) keeps it from flattening the lookup into
        // such a join. At most 2,000 candidates, none of them merged.
        "SELECT m.patient_id, m.record, m.status
           FROM (SELECT DISTINCT patient_id FROM projections.patient_match_keys
                  WHERE key = ANY($1)) AS k
           CROSS JOIN LATERAL (SELECT patient_id, record, status FROM projections.patient_match
                                WHERE patient_id = k.patient_id AND status <> 'merged'
                                LIMIT 1) AS m
          LIMIT 2000",
    )
    .bind(record.blocking_keys())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, json, status)| {
            serde_json::from_value(json)
                .map(|record| (id, record, status))
                .map_err(|_| undecodable())
        })
        .collect()
}
