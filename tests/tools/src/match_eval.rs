//! `patient-service-tools match-eval --dataset FILE.csv`: how well duplicate detection does on a
//! FEBRL data set, registering every record as the API would.
//!
//! FEBRL records are `rec-N-org` and `rec-N-dup-K`; records with the same N are one person.
//! Each record, in file order, becomes the JSON body of a registration and goes through the
//! API's own parser, then the matcher (timed), then the API's registration (with an override,
//! so every record is registered whatever the matcher says), and the `patient_match` read model
//! is brought up to date before the next record. A pair counts as found when the matcher
//! graded it `certain` or `probable` (what makes registration answer 409).
//!
//! Fields a front desk would refuse (a birth date that is no date) are left out, as a clerk
//! would leave them blank; a record without a surname keeps its given name as its one name.
//! The run uses a scratch database on the configured (or embedded) server and drops it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use clap::Args;
use domain::patient::{PatientId, Reason};
use event_store::command::CommandMetadata;
use event_store::store::PatientStore;
use projections::patient_match::PatientMatch;
use projections::Projector;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use application::matching;
use application::registration::{register, Registration};
use command_api::configuration::Settings;
use command_api::http::input;
use command_api::startup;

#[derive(Debug, Clone, Args)]
pub struct MatchEvalArgs {
    /// A FEBRL-format CSV file.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Synthetic patients registered before the data set, to measure matching against a
    /// large population.
    #[arg(long, default_value_t = 0)]
    pub population: u64,
}

/// One data set record.
struct Row {
    person: String,
    body: Map<String, Value>,
}

fn parse_csv(text: &str, today: NaiveDate) -> anyhow::Result<Vec<Row>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty file")?
        .split(',')
        .map(str::trim)
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no column {name}"))
    };
    let columns = [
        "rec_id",
        "given_name",
        "surname",
        "street_number",
        "address_1",
        "address_2",
        "suburb",
        "postcode",
        "state",
        "date_of_birth",
        "soc_sec_id",
    ]
    .map(column);
    let mut index = [0; 11];
    for (slot, c) in index.iter_mut().zip(columns) {
        *slot = c?;
    }
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: usize| fields.get(index[i]).copied().unwrap_or_default();
        let person = get(0)
            .split('-')
            .nth(1)
            .with_context(|| format!("line {}: rec_id is not rec-N-...", n + 2))?
            .to_owned();
        rows.push(Row {
            person,
            body: body(
                [
                    get(1),
                    get(2),
                    get(3),
                    get(4),
                    get(5),
                    get(6),
                    get(7),
                    get(8),
                    get(9),
                    get(10),
                ],
                today,
            ),
        });
    }
    Ok(rows)
}

/// The registration a front desk would enter for a FEBRL record.
fn body(f: [&str; 10], today: NaiveDate) -> Map<String, Value> {
    let [given, surname, number, street, locality, suburb, postcode, state, dob, ssn] = f;
    let (given, family) = match (given.is_empty(), surname.is_empty()) {
        (_, false) => (given, surname),
        (false, true) => ("", given),
        (true, true) => ("", ""),
    };
    let mut body = Map::new();
    let given: Vec<&str> = if given.is_empty() {
        vec![]
    } else {
        vec![given]
    };
    body.insert("name".into(), json!({ "given": given, "family": family }));
    body.insert("gender".into(), json!("unknown"));
    let birth_date = NaiveDate::parse_from_str(dob, "%Y%m%d")
        .ok()
        .filter(|d| *d <= today && *d >= NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default());
    if let Some(date) = birth_date {
        body.insert("birth_date".into(), json!(date.to_string()));
    }
    if !ssn.is_empty() {
        body.insert(
            "identifiers".into(),
            json!([{ "system": "urn:febrl:soc_sec_id", "value": ssn, "national": true }]),
        );
    }
    let first_line = format!("{number} {street}").trim().to_owned();
    let lines: Vec<&str> = [first_line.as_str(), locality]
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    let mut address = Map::new();
    if !lines.is_empty() {
        address.insert("lines".into(), json!(lines));
    }
    for (key, value) in [
        ("city", suburb),
        ("state", state),
        ("postal_code", postcode),
    ] {
        if !value.is_empty() {
            address.insert(key.into(), json!(value));
        }
    }
    if !address.is_empty() {
        address.insert("country".into(), json!("AU"));
        body.insert("contact".into(), json!({ "addresses": [address] }));
    }
    body
}

/// Parses a row as the API would, dropping the fields it refuses one at a time.
fn registration(mut body: Map<String, Value>, today: NaiveDate) -> Option<Registration> {
    loop {
        match input::patient::registration(&body, today) {
            Ok(registration) => return Some(registration),
            Err(errors) => {
                let field = errors.iter().next()?.field.clone();
                let top = field
                    .split(['.', '['])
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if top == "name" || top.is_empty() || body.remove(&top).is_none() {
                    return None;
                }
            }
        }
    }
}

/// Runs the evaluation and prints its figures.
///
/// # Errors
///
/// When the file cannot be read or parsed, or the database fails.
pub async fn run(settings: &Settings, args: MatchEvalArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.dataset)
        .with_context(|| format!("reading {}", args.dataset.display()))?;
    let today = Utc::now().date_naive();
    let rows = parse_csv(&text, today)?;
    let (server, embedded) = startup::connect(settings, true).await?;
    let name = format!("match_eval_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&server)
        .await?;
    let options = (*server.connect_options()).clone().database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let result = evaluate(settings, &pool, rows, args.population, today).await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&server)
        .await?;
    server.close().await;
    if let Some(cluster) = embedded {
        cluster.stop()?;
    }
    result
}

async fn evaluate(
    settings: &Settings,
    pool: &PgPool,
    rows: Vec<Row>,
    population: u64,
    today: NaiveDate,
) -> anyhow::Result<()> {
    startup::migrate(pool).await?;
    let secrets = settings.secrets()?;
    let projector = Projector::new(pool.clone(), secrets.keys.clone(), PatientMatch);
    let store = PatientStore::new(pool.clone(), secrets.keys.clone(), secrets.chain.clone());
    let reason = Reason::parse("reason", "match-eval registers every record")
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let metadata = CommandMetadata {
        user_id: "match-eval".into(),
        ..CommandMetadata::default()
    };

    let started = Instant::now();
    for n in 0..population {
        let body = synthetic::registration(1_000_000_000 + n, None);
        let Some(Value::Object(body)) = Some(body) else {
            continue;
        };
        let Some(mut input) = registration(body, today) else {
            continue;
        };
        input.duplicate_override = Some(reason.clone());
        register(
            (&store, pool),
            PatientId::new(uuid::Uuid::new_v4()),
            input,
            metadata.clone(),
            Utc::now(),
        )
        .await?;
        if n % 1000 == 999 {
            command_api::stream_feed::project_all(&projector, store.chain()).await?;
            eprintln!("population: {} registered", n + 1);
        }
    }
    command_api::stream_feed::project_all(&projector, store.chain()).await?;
    if population > 0 {
        eprintln!(
            "population of {population} registered in {:.0?}",
            started.elapsed()
        );
    }

    let mut person_of: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut persons: Vec<&str> = Vec::new();
    let mut found: HashSet<(usize, usize)> = HashSet::new();
    let mut latencies = Vec::with_capacity(rows.len());
    let mut refused = 0;
    for row in &rows {
        let Some(mut input) = registration(row.body.clone(), today) else {
            refused += 1;
            continue;
        };
        let index = persons.len();
        let timer = Instant::now();
        let matches = matching::find_matches(pool, &input.match_record()).await?;
        latencies.push(timer.elapsed());
        for m in matches.iter().filter(|m| m.grade.blocks_registration()) {
            if let Some(&other) = person_of.get(&m.id) {
                found.insert((other, index));
            }
        }
        input.duplicate_override = Some(reason.clone());
        let id = uuid::Uuid::new_v4();
        register(
            (&store, pool),
            PatientId::new(id),
            input,
            metadata.clone(),
            Utc::now(),
        )
        .await?;
        command_api::stream_feed::project_all(&projector, store.chain()).await?;
        person_of.insert(id, index);
        persons.push(&row.person);
    }

    let mut true_pairs = HashSet::new();
    let mut by_person: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in persons.iter().enumerate() {
        by_person.entry(p).or_default().push(i);
    }
    for members in by_person.values() {
        for (k, a) in members.iter().enumerate() {
            for b in &members[k + 1..] {
                true_pairs.insert((*a, *b));
            }
        }
    }
    let hits = found.intersection(&true_pairs).count() as f64;
    let precision = if found.is_empty() {
        1.0
    } else {
        hits / found.len() as f64
    };
    let recall = if true_pairs.is_empty() {
        1.0
    } else {
        hits / true_pairs.len() as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    latencies.sort();
    let pct = |p: f64| crate::measure::percentile_ms(&latencies, p);
    println!(
        "records={} refused={refused} population={population}",
        rows.len()
    );
    println!(
        "pairs_true={} pairs_found={} precision={precision:.4} recall={recall:.4} f1={f1:.4}",
        true_pairs.len(),
        found.len()
    );
    println!("match_latency_ms p50={:.2} p99={:.2}", pct(0.50), pct(0.99));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    #[test]
    fn a_febrl_record_becomes_a_registration() {
        let rows = parse_csv(
            "rec_id, given_name, surname, street_number, address_1, address_2, suburb, postcode, state, date_of_birth, soc_sec_id\n\
             rec-7-dup-0, ada, , 8, stanley street, miami, winston hills, 4223, nsw, 19151311, 5304218\n",
            today(),
        )
        .unwrap();
        assert_eq!(rows[0].person, "7");
        let registration = registration(rows[0].body.clone(), today()).unwrap();
        assert_eq!(
            registration.name.family(),
            "ada",
            "a lone given name becomes the one name"
        );
        assert!(registration.birth_date.is_none(), "month 13 is left out");
        assert!(registration.identifiers[0].national);
        assert_eq!(
            registration.contact.addresses[0].postal_code.as_deref(),
            Some("4223")
        );
    }
}
