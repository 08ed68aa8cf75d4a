//! `patient-service reconcile`: the event store against its topics. Every record of every
//! topic is read (from each partition's start to its end, by a reader outside any consumer
//! group) and compared with the stored events the relay has passed (those after its checkpoint
//! are reported as not yet published, not as missing). Named, for each topic: stored events
//! not on it, records whose `ce_id` no stored event has, and records whose `ce_eventhash` is
//! not the stored event's (another content under one identity: what publishing again after a
//! restore to an earlier point would make, were the restore's epoch not in the identity).
//! Records of an epoch before the store's current one that the store no longer has are named
//! apart: the events lost by restoring a backup, published before the restore. Per partition: its records and repeats. And the
//! patients a `PatientForgotten` record on the patient topic says were forgotten whose data key
//! the store still holds: erasures done after the backup a store was restored from, to be done
//! again (`POST /v1/patients/{id}/forget`).
//!
//! With `--read-models`, every read model is also built afresh from the store into fresh tables
//! (as `rebuild` does) and compared with the live ones, each differing table named with both
//! row counts; the fresh tables are then dropped.
//!
//! Ends with `reconcile: differences=N`; the command exits 1 when N is not 0.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::message::Message;
use schemas::patient::v1::PatientForgotten;

use crate::configuration::Settings;
use crate::startup;

/// The most ids named per kind of difference and topic (the count is always given).
const NAMED: usize = 20;

/// What the topics hold of each event: its `ce_eventhash` values and epoch, and per partition
/// the records and repeats.
#[derive(Debug, Default)]
pub(crate) struct Published {
    hashes: HashMap<String, HashSet<String>>,
    /// The `ce_epoch` of each genuine record's `ce_id` (its id recomputes; 0 when the header
    /// is absent).
    pub(crate) epochs: HashMap<String, u32>,
    partitions: Vec<(i32, u64, u64)>,
    /// The patients genuine `PatientForgotten` records say were forgotten, with the record
    /// (published in the clear: codes and ids only).
    pub(crate) forgotten: HashMap<String, PatientForgotten>,
    /// `PatientForgotten` records that are not genuine or do not decode: never acted on.
    pub(crate) unverified_erasures: u64,
}

/// A stored event: aggregate type, id and sequence, its hash, whether the relay has passed it,
/// and its epoch.
type StoredEvent = (String, String, i64, Option<Vec<u8>>, bool, i32);

/// Compares the store with the topics, prints every difference, and answers how many.
///
/// # Errors
///
/// When the database or the brokers cannot be read.
pub async fn run(settings: &Settings, read_models: bool) -> anyhow::Result<usize> {
    let Some(kafka) = settings.kafka.client_config() else {
        bail!("reconcile compares the event store with the topics: set KAFKA_BROKERS");
    };
    // The stored events by topic: ce_id, hash, and whether the relay has passed them.
    let (stored, epoch): (Vec<StoredEvent>, i32) =
        startup::with_database(settings, |pool| async move {
            let stored = sqlx::query_as(
                "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash,
                        EXISTS (SELECT 1 FROM relay_checkpoints c
                                 WHERE (e.transaction_id, e.position)
                                       <= (c.transaction_id, c.position)),
                        coalesce((SELECT max(s.epoch) FROM store_epochs s
                                   WHERE s.from_position <= e.position), 0)
                   FROM events e",
            )
            .fetch_all(&pool)
            .await?;
            let epoch = sqlx::query_scalar("SELECT coalesce(max(epoch), 0) FROM store_epochs")
                .fetch_one(&pool)
                .await?;
            Ok((stored, epoch))
        })
        .await?;
    // Records of an earlier epoch than the store's whose event the store no longer has were
    // lost by a restore: named apart, not counted as differences.
    let epoch = u32::try_from(epoch).unwrap_or(0);
    let prefix = settings.kafka.topic_prefix.clone();
    let topics: Vec<String> = schemas::topics::ALL
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    let read = topics.clone();
    let published = tokio::task::spawn_blocking(move || read_topics(&kafka, &read))
        .await
        .context("reading the topics")??;
    let mut forgotten: Vec<String> = published
        .iter()
        .flat_map(|p| p.forgotten.keys().cloned())
        .collect();
    forgotten.sort();
    forgotten.dedup();
    let mut differences = 0;
    if !forgotten.is_empty() {
        let kept: Vec<String> = startup::with_database(settings, |pool| async move {
            Ok(sqlx::query_scalar(
                "SELECT patient_id FROM patient_data_keys
                  WHERE patient_id = ANY($1) AND wrapped_key IS NOT NULL ORDER BY 1",
            )
            .bind(&forgotten)
            .fetch_all(&pool)
            .await?)
        })
        .await?;
        if !kept.is_empty() {
            differences += kept.len();
            println!(
                "{} patients forgotten (on the topic) whose data the store still holds: forget them again",
                kept.len()
            );
            for id in &kept {
                println!("  {id}");
            }
        }
    }
    for (topic, on_topic) in topics.iter().zip(published) {
        let mut missing = Vec::new();
        let mut unpublished = 0u64;
        let mut other_content = Vec::new();
        let mut known = HashSet::new();
        for (aggregate_type, aggregate_id, sequence, hash, passed, event_epoch) in &stored {
            if schemas::topics::for_aggregate_type(aggregate_type)
                .is_none_or(|t| format!("{prefix}{t}") != *topic)
            {
                continue;
            }
            let id = schemas::envelope::event_id_in_epoch(
                aggregate_type,
                aggregate_id,
                u64::try_from(*sequence).unwrap_or(0),
                u32::try_from(*event_epoch).unwrap_or(0),
            )
            .to_string();
            let hash = hash.as_deref().map(hex::encode).unwrap_or_default();
            match on_topic.hashes.get(&id) {
                None if *passed => missing.push(id.clone()),
                None => unpublished += 1,
                Some(seen) if seen.iter().any(|h| *h != hash) => other_content.push(id.clone()),
                Some(_) => {}
            }
            known.insert(id);
        }
        let (mut lost, mut unknown): (Vec<&String>, Vec<&String>) = on_topic
            .hashes
            .keys()
            .filter(|id| !known.contains(*id))
            .partition(|id| on_topic.epochs.get(*id).is_some_and(|e| *e < epoch));
        unknown.sort();
        lost.sort();
        if !lost.is_empty() {
            println!(
                "{topic}: published before the store's restore to epoch {epoch} and lost by it (not differences): {}",
                lost.len()
            );
            for id in lost.iter().take(NAMED) {
                println!("  {id}");
            }
        }
        missing.sort();
        other_content.sort();
        for (partition, records, repeats) in &on_topic.partitions {
            println!("{topic} [{partition}]: {records} records, {repeats} repeats");
        }
        println!(
            "{topic}: {} events published, {unpublished} not yet published (after the relay's checkpoint)",
            known.len() as u64 - unpublished - missing.len() as u64
        );
        for (what, ids) in [
            (
                "stored and missing from the topic",
                missing.iter().collect::<Vec<_>>(),
            ),
            ("on the topic, not in the store", unknown),
            (
                "on the topic with another content than stored (ce_eventhash)",
                other_content.iter().collect(),
            ),
        ] {
            if ids.is_empty() {
                continue;
            }
            differences += ids.len();
            println!("{topic}: {} {what}:", ids.len());
            for id in ids.iter().take(NAMED) {
                println!("  {id}");
            }
        }
    }
    if read_models {
        let secrets = settings.secrets()?;
        let storage = settings.documents.storage()?;
        let differing = startup::with_database(settings, |pool| async move {
            crate::read_models::ReadModels::new(pool, &secrets, storage)
                .compare_with_rebuild()
                .await
        })
        .await?;
        for (table, live, rebuilt) in &differing {
            println!(
                "read model table {table}: differs from a rebuild ({live} rows live, {rebuilt} rebuilt)"
            );
        }
        if differing.is_empty() {
            println!("read models: equal to a rebuild");
        }
        differences += differing.len();
    }
    println!("reconcile: differences={differences}");
    Ok(differences)
}

/// Every record of `topics`, read from each partition's start to its end.
pub(crate) fn read_topics(
    kafka: &rdkafka::ClientConfig,
    topics: &[String],
) -> anyhow::Result<Vec<Published>> {
    let mut published: HashMap<String, Published> = HashMap::new();
    let mut counts: HashMap<(String, i32), (u64, u64)> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    projections::kafka::read_to_end(
        kafka,
        "patient-service-reconcile",
        topics,
        Duration::from_secs(600),
        |message| {
            let key = (message.topic().to_owned(), message.partition());
            let headers = projections::kafka::headers_of(message);
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            };
            let id = header(schemas::envelope::H_ID).unwrap_or_default();
            let hash = header(schemas::envelope::H_EVENT_HASH).unwrap_or_default();
            // Whether the record is what the relay publishes: its ce_id recomputes from its type,
            // subject, sequence and epoch. Anyone able to produce to a topic can write the others.
            let event = schemas::PublishedEvent::from_headers(
                headers.iter().copied(),
                message.payload().unwrap_or_default(),
            )
            .ok()
            .filter(|event| event.verify().is_ok());
            if header(schemas::envelope::H_TYPE)
                .is_some_and(|t| t == schemas::envelope::ce_type("PatientForgotten", 1))
            {
                // Acted on by a restore (a patient forgotten again): only a genuine record whose
                // data names the patient it is about.
                let erasure = event.as_ref().and_then(|event| {
                    serde_json::from_slice::<PatientForgotten>(&event.data)
                        .ok()
                        .filter(|data| data.patient_id.to_string() == event.subject)
                });
                let found = published.entry(key.0.clone()).or_default();
                match erasure {
                    Some(erasure) => {
                        found
                            .forgotten
                            .insert(erasure.patient_id.to_string(), erasure);
                    }
                    None => found.unverified_erasures += 1,
                }
            }
            let found = published.entry(key.0.clone()).or_default();
            if let Some(event) = &event {
                found.epochs.insert(id.clone(), event.epoch);
            }
            found.hashes.entry(id.clone()).or_default().insert(hash);
            let count = counts.entry(key.clone()).or_default();
            count.0 += 1;
            if !seen.insert(format!("{}/{id}", key.0)) {
                count.1 += 1;
            }
        },
    )?;
    Ok(topics
        .iter()
        .map(|topic| {
            let mut found = published.remove(topic).unwrap_or_default();
            let mut partitions: Vec<(i32, u64, u64)> = counts
                .iter()
                .filter(|((t, _), _)| t == topic)
                .map(|((_, p), (n, r))| (*p, *n, *r))
                .collect();
            partitions.sort_unstable();
            found.partitions = partitions;
            found
        })
        .collect())
}
