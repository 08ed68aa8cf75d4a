//! `patient-service-tools bench-records`: the medical record benchmark, in one run on one database:
//!
//! - seeds `--items` clinical items over `--patients` patients through the medical record
//!   store (the write path without HTTP: cqrs-es, sealing, the hash chain), and reports the
//!   rate, and the rate again per chart size, since a chart is one aggregate;
//! - uploads `--documents` documents over HTTP (text, Markdown, HTML and PDF, text extracted
//!   and stored sealed) and reports documents per second from the first upload until the last
//!   is searchable (indexed by the read model);
//! - times full-text searches of one patient's record and structured searches across patients
//!   over HTTP, p50 and p99.
//!
//! The machine is noisy: compare figures only within one run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use clap::Args;
use domain::medical_record::items::*;
use domain::medical_record::values::{Concept, Frequency, PeriodUnit, Quantity};
use domain::medical_record::{Acknowledgement, ItemContent, ItemId, MedicalRecordCommand};
use domain::patient::governance::Principal;
use domain::patient::PatientId;
use event_store::command::CommandMetadata;
use event_store::records::MedicalRecordStore;
use serde_json::json;

use command_api::auth::{Authenticator, Role};
use command_api::configuration::Settings;
use command_api::http::system_clock;
use command_api::startup::{Roles, Service};

#[derive(Debug, Clone, Args)]
pub struct BenchRecordsArgs {
    /// Patients the items and documents are spread over.
    #[arg(long, default_value_t = 1000)]
    pub patients: usize,
    /// Clinical items seeded.
    #[arg(long, default_value_t = 100_000)]
    pub items: usize,
    /// Documents uploaded over HTTP.
    #[arg(long, default_value_t = 10_000)]
    pub documents: usize,
    /// Searches timed, of each kind.
    #[arg(long, default_value_t = 500)]
    pub searches: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

pub(crate) const CLINICIAN: &str = "bench-clinician";

/// Words documents are made of: a clinical vocabulary, so searches hit ranked subsets.
const WORDS: &[&str] = &[
    "patient",
    "reports",
    "chest",
    "pain",
    "dyspnoea",
    "hypertension",
    "diabetes",
    "metformin",
    "insulin",
    "asthma",
    "inhaler",
    "penicillin",
    "amoxicillin",
    "rash",
    "anaphylaxis",
    "fever",
    "cough",
    "pneumonia",
    "fracture",
    "radiograph",
    "follow-up",
    "clinic",
    "discharge",
    "summary",
    "angina",
    "troponin",
    "echocardiogram",
    "statin",
    "cholesterol",
    "renal",
    "creatinine",
    "hepatic",
    "ultrasound",
    "migraine",
    "seizure",
    "epilepsy",
    "depression",
    "anxiety",
    "sertraline",
    "warfarin",
    "anticoagulation",
    "atrial",
    "fibrillation",
    "stroke",
    "sepsis",
    "antibiotics",
    "wound",
    "dressing",
    "physiotherapy",
    "referral",
];

fn text_of(n: u64, words: usize) -> String {
    (0..words)
        .map(|i| WORDS[(synthetic::mix(n * 1000 + i as u64) % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn concept(text: &str) -> Concept {
    Concept::parse("c", None, None, Some(text)).unwrap_or_else(|_| Concept {
        system: None,
        code: None,
        display: None,
        text: "unknown".into(),
    })
}

/// Item `i` of a chart: allergies with distinct substances, medications none of them names,
/// immunizations, problems and history.
/// Records item `i` of the benchmark's kinds (varied by `patient`) on patient `id`'s chart,
/// through the store, as the bench clinician.
///
/// # Errors
///
/// The store's error.
pub(crate) async fn record(
    store: &MedicalRecordStore,
    id: PatientId,
    (i, patient): (usize, usize),
) -> anyhow::Result<()> {
    let command = MedicalRecordCommand::Record {
        item_id: ItemId::new(uuid::Uuid::new_v4()),
        content: item(i, patient),
        reason: None,
        acknowledgement: Acknowledgement {
            by: Principal::parse("p", CLINICIAN).map_err(|e| anyhow::anyhow!("{e}"))?,
            allergies: vec![],
        },
        at: Utc::now(),
    };
    store
        .execute(
            id,
            command,
            CommandMetadata {
                user_id: CLINICIAN.into(),
                ..CommandMetadata::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub(crate) fn item(i: usize, patient: usize) -> ItemContent {
    let day = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap_or_default()
        + chrono::Duration::days((synthetic::mix((patient * 1000 + i) as u64) % 2000) as i64);
    let prescriber = Principal::parse("p", CLINICIAN).unwrap_or_else(|_| unreachable!());
    match i % 10 {
        0 => ItemContent::Allergy(Allergy {
            substance: concept(&format!("substance-{i}")),
            category: Some(AllergyCategory::Medication),
            criticality: Some(AllergyCriticality::Low),
            reactions: vec![],
            clinical_status: AllergyClinicalStatus::Active,
            verification_status: Some(VerificationStatus::Confirmed),
            onset: Some(day),
            note: None,
        }),
        1..=3 => ItemContent::Medication(Medication {
            medication: concept(&format!("medication-{i} 10 MG oral tablet")),
            source: MedicationSource::Order,
            dose: Some(
                Quantity::parse("d", Some("10"), Some("mg")).unwrap_or_else(|_| unreachable!()),
            ),
            route: Some(Route::Oral),
            frequency: Some(
                Frequency::new("f", 1, 1, PeriodUnit::Day, false)
                    .unwrap_or_else(|_| unreachable!()),
            ),
            as_needed: false,
            start: Some(day),
            end: None,
            status: MedicationStatus::Active,
            prescriber: Some(prescriber),
            reason_for_use: None,
            note: None,
        }),
        4 | 5 => ItemContent::Immunization(Immunization {
            vaccine: Concept {
                system: Some(domain::medical_record::values::systems::CVX.into()),
                code: Some("208".into()),
                display: None,
                text: "COVID-19 mRNA".into(),
            },
            occurred_on: day,
            lot_number: None,
            site: Some(BodySite::LeftArm),
            route: Some(Route::Intramuscular),
            performer: None,
            status: ImmunizationStatus::Completed,
            note: None,
        }),
        6 | 7 => ItemContent::Problem(Problem {
            condition: Concept {
                system: Some(domain::medical_record::values::systems::ICD_10.into()),
                code: Some(format!("E{}", 10 + i % 4)),
                display: None,
                text: text_of(i as u64, 3),
            },
            onset: Some(day),
            abatement: None,
            clinical_status: ProblemStatus::Active,
            severity: Some(Severity::Moderate),
            note: None,
        }),
        _ => ItemContent::History(HistoryEntry {
            category: HistoryCategory::Social,
            description: concept(&text_of(i as u64 + 7, 4)),
            relationship: None,
            occurred_on: None,
            note: None,
        }),
    }
}

/// Runs the benchmark and prints its figures on stdout.
///
/// # Errors
///
/// When the service cannot start or a request fails.
pub async fn run(settings: &Settings, args: BenchRecordsArgs) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    settings.http.port = 0;
    settings.database.max_connections = settings
        .database
        .max_connections
        .max(args.concurrency as u32 + 8);
    let service = Service::start(&settings, Roles::ALL, system_clock()).await?;
    let result = measure(&settings, &service, &args).await;
    service.stop().await?;
    result
}

async fn measure(
    settings: &Settings,
    service: &Service,
    args: &BenchRecordsArgs,
) -> anyhow::Result<()> {
    let port = service.port.context("the API did not start")?;
    let base = format!("http://127.0.0.1:{port}");
    let auth = Authenticator::new(&settings.auth);
    let registrar = auth.mint("bench-registrar", &[Role::Registrar], Utc::now())?;
    let clinician = auth.mint(CLINICIAN, &[Role::Clinician], Utc::now())?;
    let admin = auth.mint("bench-admin", &[Role::Admin], Utc::now())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let pool = service.pool.clone();
    println!(
        "patient-service-tools bench-records: {} patients, {} clinical items, {} documents",
        args.patients, args.items, args.documents
    );

    // Patients, each in the bench clinician's care.
    let mut patients = Vec::with_capacity(args.patients);
    for n in 0..args.patients {
        let id = crate::population::register(&client, &base, &registrar, 2_000_000 + n).await?;
        let response = client
            .post(format!("{base}/v1/patients/{id}/care-relationships"))
            .bearer_auth(&registrar)
            .header("if-match", "\"1\"")
            .json(&json!({ "practitioner": CLINICIAN, "role": "attending" }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "care relationship answered {}",
            response.status()
        );
        patients.push(id);
    }
    let patients = Arc::new(patients);

    // Clinical items through the store, each writer owning whole charts.
    let keys = settings.secrets()?;
    let store = MedicalRecordStore::new(pool.clone(), keys.keys, keys.chain);
    let per_patient = args.items.div_ceil(args.patients.max(1));
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let timings = Arc::new(std::sync::Mutex::new(vec![Vec::<Duration>::new(); 4]));
    for _ in 0..args.concurrency {
        let (store, patients, next, timings) = (
            store.clone(),
            patients.clone(),
            next.clone(),
            timings.clone(),
        );
        let items = args.items;
        workers.spawn(async move {
            loop {
                let p = next.fetch_add(1, Ordering::Relaxed);
                if p >= patients.len() {
                    return Ok::<_, anyhow::Error>(());
                }
                let id =
                    PatientId::parse("id", &patients[p]).map_err(|e| anyhow::anyhow!("{e}"))?;
                for i in 0..per_patient.min(items.saturating_sub(p * per_patient)) {
                    let one = Instant::now();
                    record(&store, id, (i, p))
                        .await
                        .map_err(|e| anyhow::anyhow!("item {i} of patient {p}: {e}"))?;
                    let bucket = (i * 4 / per_patient.max(1)).min(3);
                    if let Ok(mut t) = timings.lock() {
                        t[bucket].push(one.elapsed());
                    }
                }
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    let seeded = args.items.min(per_patient * args.patients);
    println!(
        "{:<52} {:>10.0} items/s ({seeded} items in {:.1} s, {} writers)",
        "clinical items recorded (store, no HTTP)",
        seeded as f64 / started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        args.concurrency
    );
    if let Ok(timings) = timings.lock() {
        for (quarter, samples) in timings.iter().enumerate() {
            let mut sorted = samples.clone();
            sorted.sort();
            println!(
                "{:<52} p50 {:>6.2} ms  p99 {:>6.2} ms",
                format!(
                    "  one item, chart holding {}-{} items",
                    quarter * per_patient / 4,
                    (quarter + 1) * per_patient / 4
                ),
                crate::measure::percentile_ms(&sorted, 0.5),
                crate::measure::percentile_ms(&sorted, 0.99)
            );
        }
    }
    let started = Instant::now();
    wait_for_items(&pool, seeded as i64).await?;
    println!(
        "{:<52} {:>10.1} s",
        "read model caught up with the items after",
        started.elapsed().as_secs_f64()
    );

    // Documents over HTTP, until every one is indexed.
    let pdf_lines: Vec<String> = (0..20).map(|l| text_of(l, 12)).collect();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, base, token, patients, next, pdf_lines) = (
            client.clone(),
            base.clone(),
            clinician.clone(),
            patients.clone(),
            next.clone(),
            pdf_lines.clone(),
        );
        let documents = args.documents;
        workers.spawn(async move {
            loop {
                let d = next.fetch_add(1, Ordering::Relaxed);
                if d >= documents {
                    return Ok::<_, anyhow::Error>(());
                }
                let text = text_of(10_000 + d as u64, 300);
                let (media_type, bytes) = match d % 10 {
                    0 => {
                        let lines: Vec<&str> = pdf_lines.iter().map(String::as_str).chain([text.as_str()]).collect();
                        ("application/pdf", synthetic::pdf(&lines))
                    }
                    1 => ("text/html", format!("<html><body><h1>Letter</h1><p>{text}</p></body></html>").into_bytes()),
                    2 => ("text/markdown", format!("# Letter\n\n{text}").into_bytes()),
                    _ => ("text/plain", text.into_bytes()),
                };
                let boundary = "bench-boundary-7f3a";
                let metadata = json!({
                    "title": format!("Letter {d}"),
                    "document_type": { "text": "Clinical letter" },
                    "author": CLINICIAN,
                    "date": "2026-11-20"
                });
                let mut body = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d\"\r\nContent-Type: {media_type}\r\n\r\n"
                )
                .into_bytes();
                body.extend_from_slice(&bytes);
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                let patient = &patients[d % patients.len()];
                let response = client
                    .post(format!("{base}/v1/patients/{patient}/documents"))
                    .bearer_auth(&token)
                    .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 201, "upload answered {}", response.status());
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    let uploaded = started.elapsed();
    wait_for_items(&pool, (seeded + args.documents) as i64).await?;
    let indexed = started.elapsed();
    println!(
        "{:<52} {:>10.1} docs/s (uploaded in {:.1} s, all searchable after {:.1} s)",
        "documents uploaded, extracted and indexed",
        args.documents as f64 / indexed.as_secs_f64(),
        uploaded.as_secs_f64(),
        indexed.as_secs_f64()
    );

    // Searches over HTTP.
    let mut text_latencies = Vec::with_capacity(args.searches);
    let mut text_hits = 0;
    for s in 0..args.searches {
        let patient = &patients[(synthetic::mix(s as u64) % patients.len() as u64) as usize];
        let word = WORDS[(synthetic::mix(s as u64 + 99) % WORDS.len() as u64) as usize];
        let one = Instant::now();
        let response = client
            .get(format!(
                "{base}/v1/patients/{patient}/medical-record/search?q={word}"
            ))
            .bearer_auth(&clinician)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "search answered {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        text_latencies.push(one.elapsed());
        text_hits += body["items"].as_array().map_or(0, Vec::len);
    }
    text_latencies.sort();
    println!(
        "{:<52} p50 {:>6.2} ms  p99 {:>6.2} ms ({:.1} hits per search)",
        "full-text search of one patient's record (HTTP)",
        crate::measure::percentile_ms(&text_latencies, 0.5),
        crate::measure::percentile_ms(&text_latencies, 0.99),
        text_hits as f64 / args.searches.max(1) as f64
    );
    let mut coded_latencies = Vec::with_capacity(args.searches);
    for s in 0..args.searches {
        let query = if s % 2 == 0 {
            format!(
                "kind=problem&system=http://hl7.org/fhir/sid/icd-10&code=E{}&limit=50",
                10 + s % 4
            )
        } else {
            format!(
                "kind=allergy&text=substance-{}&active=true&limit=50",
                (s % 10) * 10
            )
        };
        let one = Instant::now();
        let response = client
            .get(format!("{base}/v1/medical-records/search?{query}"))
            .bearer_auth(&admin)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "search answered {}",
            response.status()
        );
        response.bytes().await?;
        coded_latencies.push(one.elapsed());
    }
    coded_latencies.sort();
    println!(
        "{:<52} p50 {:>6.2} ms  p99 {:>6.2} ms (50 rows a page)",
        "structured search across patients (HTTP)",
        crate::measure::percentile_ms(&coded_latencies, 0.5),
        crate::measure::percentile_ms(&coded_latencies, 0.99)
    );
    Ok(())
}

async fn wait_for_items(pool: &sqlx::PgPool, expected: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM projections.medical_record_items")
                .fetch_one(pool)
                .await?;
        if count >= expected {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read model holds {count} of {expected} items after an hour"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
