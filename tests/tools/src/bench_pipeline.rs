//! `patient-service-tools bench-pipeline`: the whole pipeline in one run on one database, ending
//! with one `summary:` line of fixed form so that runs can be compared over time:
//!
//! 1. registrations per second over HTTP at 1 and 16 clients, each against `pgbench` on the
//!    same cluster before and after ([`crate::pgbench`]);
//! 2. projection lag p99 (201 to visible in search) while writers run at 80% of the 16-client
//!    rate;
//! 3. availability p99 after the bookings, and bookings per second at 8 clients
//!    ([`crate::bench_schedule`]);
//! 4. one clinical item on a long chart against one on an empty chart (p99 ratio);
//! 5. projectors catching up on a backlog left while they were off, from the event-store
//!    stream;
//! 6. `rebuild` of every read model from the whole store, after a mixed store of about 100
//!    events per patient is added to it ([`crate::mixed_store`]; over a million events in
//!    all at the default sizes), with the process's peak RSS;
//! 7. the relay publishing a backlog to Kafka (only with brokers configured; otherwise 0 and
//!    a note on stderr).
//!
//! `--scale small` runs it in about two minutes; the default sizes are those of the
//! performance goals.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use domain::patient::PatientId;
use event_store::records::MedicalRecordStore;

use command_api::auth::Role;
use command_api::configuration::Settings;
use command_api::http::system_clock;
use command_api::read_models::{ReadModelVisitor, ReadModels};
use command_api::startup::{Roles, Service};

use crate::bench_records::record;
use crate::bench_schedule::BenchScheduleArgs;
use crate::idp::{Idp, Tokens};
use crate::measure::percentile_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// A smoke run for the test suite (seconds; its figures mean little).
    Tiny,
    /// A quick run (about two minutes).
    Small,
    /// The sizes of the performance goals.
    Full,
}

#[derive(Debug, Clone, Args)]
pub struct BenchPipelineArgs {
    #[arg(long, value_enum, default_value = "full")]
    pub scale: Scale,
}

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    registrations: usize,
    lag_samples: usize,
    pgbench_seconds: u32,
    practitioners: usize,
    days: i64,
    bookings: usize,
    chart: usize,
    /// Items timed on the long chart, and as many on empty charts.
    chart_samples: usize,
    backlog_items: usize,
    backlog_patients: usize,
    /// Patients of the mixed store added before the rebuild ([`crate::mixed_store`]).
    mixed_patients: usize,
}

impl Sizes {
    fn of(scale: Scale) -> Self {
        match scale {
            Scale::Tiny => Self {
                registrations: 20,
                lag_samples: 5,
                pgbench_seconds: 1,
                practitioners: 2,
                days: 2,
                bookings: 10,
                chart: 20,
                chart_samples: 5,
                backlog_items: 200,
                backlog_patients: 5,
                mixed_patients: 2,
            },
            Scale::Small => Self {
                registrations: 300,
                lag_samples: 50,
                pgbench_seconds: 3,
                practitioners: 10,
                days: 7,
                bookings: 400,
                chart: 200,
                chart_samples: 100,
                backlog_items: 5_000,
                backlog_patients: 50,
                mixed_patients: 150,
            },
            Scale::Full => Self {
                registrations: 2_000,
                lag_samples: 200,
                pgbench_seconds: 10,
                practitioners: 50,
                days: 30,
                bookings: 4_000,
                chart: 1_000,
                chart_samples: 400,
                backlog_items: 100_000,
                backlog_patients: 1_000,
                // With what the other measures stored, over a million events.
                mixed_patients: 10_000,
            },
        }
    }
}

/// The figures of the summary line.
#[derive(Debug, Default)]
struct Summary {
    reg_ratio_c1: f64,
    reg_ratio_c16: f64,
    lag_p99_ms: f64,
    catchup_events_per_s: f64,
    relay_events_per_s: f64,
    rebuild_events_per_s: f64,
    availability_p99_ms: f64,
    bookings_per_s_c8: f64,
    chart1000_p99_ratio: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "summary: reg_ratio_c1={:.2} reg_ratio_c16={:.2} lag_p99_ms={:.0} catchup_events_per_s={:.0} relay_events_per_s={:.0} rebuild_events_per_s={:.0} availability_p99_ms={:.0} bookings_per_s_c8={:.0} chart1000_p99_ratio={:.2}",
            self.reg_ratio_c1,
            self.reg_ratio_c16,
            self.lag_p99_ms,
            self.catchup_events_per_s,
            self.relay_events_per_s,
            self.rebuild_events_per_s,
            self.availability_p99_ms,
            self.bookings_per_s_c8,
            self.chart1000_p99_ratio,
        )
    }
}

/// Runs every measure and prints the figures, then the summary line.
///
/// # Errors
///
/// When the service cannot start or a measure fails.
pub async fn run(settings: &Settings, args: BenchPipelineArgs) -> anyhow::Result<()> {
    let sizes = Sizes::of(args.scale);
    let mut settings = settings.clone();
    settings.http.port = 0;
    if settings.kafka.client_config().is_some() {
        // Topics and consumer groups of this run's own: a broker shared with earlier runs
        // holds their events, which this database's projectors would (rightly) park as not in
        // its event store.
        let run = uuid::Uuid::new_v4().simple().to_string();
        settings.kafka.topic_prefix = format!("{}bench-{run}.", settings.kafka.topic_prefix);
        settings.kafka.consumer_group_prefix =
            format!("{}bench-{run}.", settings.kafka.consumer_group_prefix);
    }
    // Callers sign in as in production: RS256 tokens verified against a key set.
    let idp = Idp::new()?;
    idp.configure(&mut settings);
    let tokens = Tokens::Provider(idp);
    settings.database.max_connections = settings.database.max_connections.max(48);
    let mut summary = Summary::default();
    println!("patient-service-tools bench-pipeline: {sizes:?}");

    // The service as deployed in one process: API, projectors, background work.
    let service = Service::start(&settings, Roles::ALL, system_clock()).await?;
    let live = live_measures((&settings, &tokens), &service, sizes, &mut summary).await;
    service.stop().await?;
    live?;

    // The service stopped: a backlog piles up through the store, then the projectors catch up
    // on it; then everything is rebuilt.
    let (pool, embedded) = command_api::startup::connect(&settings, true).await?;
    let offline = offline_measures(&settings, &pool, sizes, &mut summary).await;
    pool.close().await;
    if let Some(cluster) = embedded {
        cluster.stop()?;
    }
    offline?;

    println!("{summary}");
    Ok(())
}

/// Registrations, lag under load, scheduling and the long chart, with everything running.
async fn live_measures(
    (settings, tokens): (&Settings, &Tokens),
    service: &Service,
    sizes: Sizes,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{}", service.port.context("no API")?);
    let registrar = tokens.mint("bench-registrar", &[Role::Registrar])?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;

    let mut c16_rate = 0.0;
    for (level, clients) in [1_usize, 16].into_iter().enumerate() {
        let before = crate::pgbench::tps(service, clients, sizes.pgbench_seconds).await?;
        let rate = crate::bench::registrations_per_second(
            &client,
            &base,
            &registrar,
            level * sizes.registrations,
            sizes.registrations,
            clients,
        )
        .await?;
        let after = crate::pgbench::tps(service, clients, sizes.pgbench_seconds).await?;
        let ratio = rate / ((before + after) / 2.0);
        println!(
            "registrations, {clients:>2} clients: {rate:.0}/s; pgbench {before:.0} before, {after:.0} after; ratio {ratio:.3}"
        );
        if clients == 1 {
            summary.reg_ratio_c1 = ratio;
        } else {
            summary.reg_ratio_c16 = ratio;
            c16_rate = rate;
        }
    }

    // Writers at 80% of the 16-client rate while the lag is sampled.
    let target = c16_rate * 0.8;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(10_000_000));
    let mut writers = tokio::task::JoinSet::new();
    let per_writer = Duration::from_secs_f64(15.0 / target.max(1.0));
    for _ in 0..15 {
        let (client, base, token, stop, next) = (
            client.clone(),
            base.clone(),
            registrar.clone(),
            stop.clone(),
            next.clone(),
        );
        writers.spawn(async move {
            let mut tick = tokio::time::interval(per_writer);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let i = next.fetch_add(1, Ordering::Relaxed);
                crate::population::register(&client, &base, &token, i).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let lags = lags_within(
        &client,
        (&base, &registrar),
        &service.pool,
        sizes.lag_samples,
        Duration::from_secs(u64::from(sizes.pgbench_seconds) * 5),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let mut lags = lags?;
    lags.sort();
    summary.lag_p99_ms = percentile_ms(&lags, 0.99);
    println!(
        "projection lag with writers at {target:.0}/s: p50 {:.1} ms, p99 {:.1} ms",
        percentile_ms(&lags, 0.5),
        summary.lag_p99_ms
    );

    let schedule = crate::bench_schedule::measure(
        tokens,
        service,
        &BenchScheduleArgs {
            practitioners: sizes.practitioners,
            days: sizes.days,
            samples: 50,
            bookings: sizes.bookings,
            concurrency: vec![8],
        },
    )
    .await?;
    summary.availability_p99_ms = schedule.availability_after_p99_ms;
    summary.bookings_per_s_c8 = schedule
        .bookings_per_s
        .iter()
        .find(|(c, _)| *c == 8)
        .map_or(0.0, |(_, rate)| *rate);

    summary.chart1000_p99_ratio =
        long_chart(settings, service, &client, &base, &registrar, sizes).await?;
    Ok(())
}

/// Projection lags of registrations made one after another, for at most `window` (or
/// `samples` of them): a registration not yet visible when the window ends counts with the
/// lag it has then, so projectors that fall behind show as a large lag, not an error.
async fn lags_within(
    client: &reqwest::Client,
    (base, token): (&str, &str),
    pool: &sqlx::PgPool,
    samples: usize,
    window: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut lags = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = crate::population::register(client, base, token, 40_000_000 + i).await?;
        let id = uuid::Uuid::parse_str(&id)?;
        let committed = Instant::now();
        loop {
            let visible: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM projections.patient_search WHERE patient_id = $1)",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            if visible || started.elapsed() > window {
                lags.push(committed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if started.elapsed() > window {
            break;
        }
    }
    Ok(lags)
}

/// One clinical item on a chart of `sizes.chart` items against one on an empty chart: the
/// chart is filled first, then items go alternately to it and to a fresh patient's empty chart,
/// so both sides of the ratio see the same moments of a noisy machine. Returns p99 long / p99
/// empty.
async fn long_chart(
    settings: &Settings,
    service: &Service,
    client: &reqwest::Client,
    base: &str,
    registrar: &str,
    sizes: Sizes,
) -> anyhow::Result<f64> {
    let parse = |id: String| PatientId::parse("id", &id).map_err(|e| anyhow::anyhow!("{e}"));
    let long = parse(crate::population::register(client, base, registrar, 20_000_000).await?)?;
    let secrets = settings.secrets()?;
    let store = MedicalRecordStore::new(service.pool.clone(), secrets.keys, secrets.chain);
    for i in 0..sizes.chart {
        record(&store, long, (i, 0)).await?;
    }
    let samples = sizes.chart_samples;
    let mut empty_charts = Vec::with_capacity(samples);
    for k in 0..samples {
        let id = crate::population::register(client, base, registrar, 20_000_001 + k).await?;
        empty_charts.push(parse(id)?);
    }
    let (mut on_empty, mut on_long) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for (k, &empty) in empty_charts.iter().enumerate() {
        // The same kind of item on both: item `chart + k` of the benchmark's mix.
        let i = sizes.chart + k;
        let one = Instant::now();
        record(&store, empty, (i, k + 1)).await?;
        on_empty.push(one.elapsed());
        let one = Instant::now();
        record(&store, long, (i, 0)).await?;
        on_long.push(one.elapsed());
    }
    on_empty.sort();
    on_long.sort();
    let p = |times: &[Duration], q| percentile_ms(times, q);
    println!(
        "one item, {samples} of each, alternating: on an empty chart p50 {:.2} ms p99 {:.2} ms; on a chart of {}+ items p50 {:.2} ms p99 {:.2} ms",
        p(&on_empty, 0.5),
        p(&on_empty, 0.99),
        sizes.chart,
        p(&on_long, 0.5),
        p(&on_long, 0.99),
    );
    Ok(p(&on_long, 0.99) / p(&on_empty, 0.99).max(f64::EPSILON))
}

/// With the projectors off: a backlog of items, the projectors catching up on it, then a
/// rebuild of everything.
async fn offline_measures(
    settings: &Settings,
    pool: &sqlx::PgPool,
    sizes: Sizes,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let secrets = settings.secrets()?;
    let store = MedicalRecordStore::new(pool.clone(), secrets.keys.clone(), secrets.chain.clone());
    // Patients registered by the live measures, their (empty) charts the backlog: not the
    // long chart's patient, whose items the backlog's would repeat.
    let patients: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT patient_id FROM projections.patient_search s
          WHERE NOT EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'MedicalRecord'
                               AND e.aggregate_id = s.patient_id::text)
          ORDER BY patient_id LIMIT $1",
    )
    .bind(i64::try_from(sizes.backlog_patients).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(!patients.is_empty(), "no patients to record items for");
    let patients: Arc<Vec<PatientId>> =
        Arc::new(patients.into_iter().map(PatientId::new).collect());
    let per_patient = sizes.backlog_items.div_ceil(patients.len());
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, patients, next) = (store.clone(), patients.clone(), next.clone());
        writers.spawn(async move {
            loop {
                let p = next.fetch_add(1, Ordering::Relaxed);
                let Some(&id) = patients.get(p) else {
                    return Ok::<_, anyhow::Error>(());
                };
                for i in 0..per_patient {
                    record(&store, id, (i, 0)).await?;
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }

    let read_models = ReadModels::new(pool.clone(), &secrets, settings.documents.storage()?);
    let started = Instant::now();
    let read = read_models.catch_up_all().await?;
    let seconds = started.elapsed().as_secs_f64();
    // One reader feeds every model each event: each model takes in the whole backlog.
    summary.catchup_events_per_s = read as f64 / seconds;
    println!(
        "projectors catching up: {read} events, each applied by every read model, in {seconds:.1} s ({:.0} events/s each)",
        summary.catchup_events_per_s
    );

    match settings.kafka.client_config() {
        Some(kafka) => {
            let (rate, topic_prefix) = relay_rate(settings, pool, &kafka).await?;
            summary.relay_events_per_s = rate;
            // The store is on those topics now: the projectors catch up from Kafka too, and
            // the slower of the two feeds is the figure.
            let from_kafka = kafka_catch_up(settings, &read_models, &kafka, &topic_prefix).await?;
            summary.catchup_events_per_s = summary.catchup_events_per_s.min(from_kafka);
        }
        None => eprintln!("relay: not measured, no Kafka brokers configured (set KAFKA_BROKERS)"),
    }

    // The store the rebuild reads: what the measures left, and patients with the whole
    // history a clinic gives them.
    let started = Instant::now();
    let appended =
        crate::mixed_store::generate(pool, &secrets, (1_000_000, sizes.mixed_patients)).await?;
    println!(
        "mixed store: {} patients, {appended} events appended through the stores in {:.1} s",
        sizes.mixed_patients,
        started.elapsed().as_secs_f64()
    );

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    reset_peak_rss();
    let started = Instant::now();
    let read = read_models.rebuild_all().await?;
    let seconds = started.elapsed().as_secs_f64();
    summary.rebuild_events_per_s = stored as f64 / seconds;
    println!(
        "rebuild of every read model: {stored} events stored, {read} read in one pass, in {seconds:.1} s ({:.0} events/s); peak RSS of this process {}",
        summary.rebuild_events_per_s,
        peak_rss().map_or_else(|| "unknown".to_owned(), |kib| format!("{} MiB", kib / 1024)),
    );
    Ok(())
}

/// Starts this process's peak resident set size again from its current size (Linux).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("peak RSS: not reset ({e}); the figure covers the whole run");
    }
}

/// This process's peak resident set size since [`reset_peak_rss`], in KiB (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A relay of its own (a new name, so a checkpoint at the start) publishing everything stored
/// to topics of their own: events acknowledged by the broker per second.
async fn relay_rate(
    settings: &Settings,
    pool: &sqlx::PgPool,
    kafka: &rdkafka::ClientConfig,
) -> anyhow::Result<(f64, String)> {
    use event_store::relay::{Relay, RelaySettings};
    let secrets = settings.secrets()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let relay_settings = RelaySettings {
        name: format!("bench-{run}"),
        topic_prefix: format!("bench-{run}."),
        ..RelaySettings::default()
    };
    event_store::relay::ensure_topics(
        kafka,
        &relay_settings.topic_prefix,
        settings.kafka.partitions,
        settings.kafka.replication,
    )
    .await?;
    let newest = event_store::stream::newest(pool)
        .await?
        .context("nothing stored to relay")?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let relay = Relay::new(
        pool.clone(),
        secrets.keys,
        secrets.chain,
        kafka,
        relay_settings.clone(),
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(relay.run(stop.clone()));
    let deadline = started + Duration::from_secs(600);
    loop {
        let at: Option<(String, i64)> = sqlx::query_as(
            "SELECT transaction_id::text, position FROM relay_checkpoints WHERE relay = $1",
        )
        .bind(&relay_settings.name)
        .fetch_optional(pool)
        .await?;
        let at = at
            .map(|(x, p)| event_store::stream::Cursor::parse(&x, p))
            .transpose()?;
        if at.is_some_and(|at| at >= newest) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not catch up in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    running.await?;
    let rate = stored as f64 / seconds;
    println!(
        "relay: {stored} events published and acknowledged in {seconds:.1} s ({rate:.0} events/s)"
    );
    Ok((rate, relay_settings.topic_prefix))
}
/// Empties every read model, then has Kafka-fed projectors (consumer groups of their own)
/// take in everything the relay published under `topic_prefix`: events per second until every
/// model holds them all.
async fn kafka_catch_up(
    settings: &Settings,
    read_models: &ReadModels,
    kafka: &rdkafka::ClientConfig,
    topic_prefix: &str,
) -> anyhow::Result<f64> {
    let pool = read_models.pool();
    read_models.reset_all().await?;
    // What each model holds when done: the events of the topics it reads (sequences run
    // from 1 without gaps, so their sum per model is that count), and for the audit log one
    // entry per event.
    let (patients, records, all): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE aggregate_type = 'Patient'),
                count(*) FILTER (WHERE aggregate_type = 'MedicalRecord'),
                count(*)
           FROM events",
    )
    .fetch_one(pool)
    .await?;
    let mut kafka = kafka.clone();
    kafka.set(
        "fetch.wait.max.ms",
        settings.kafka.fetch_wait_max_ms.to_string(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut feeders = KafkaFeeders {
        tasks: tokio::task::JoinSet::new(),
        kafka,
        group: format!("{topic_prefix}catch-up"),
        topic_prefix: topic_prefix.to_owned(),
        stop: stop.clone(),
    };
    let started = Instant::now();
    read_models.visit_each(&mut feeders).await?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let (search, matched, charts, audited): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(last_sequence), 0)::bigint FROM projections.applied_sequences
                      WHERE projector = 'patient_search'),
                    (SELECT coalesce(sum(last_sequence), 0)::bigint FROM projections.applied_sequences
                      WHERE projector = 'patient_match'),
                    (SELECT coalesce(sum(last_sequence), 0)::bigint FROM projections.applied_sequences
                      WHERE projector = 'medical_records'),
                    (SELECT count(*) FROM projections.audit_log)",
        )
        .fetch_one(pool)
        .await?;
        if search >= patients
            && matched >= patients
            && charts >= patients + records
            && audited >= all
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the Kafka-fed projectors did not catch up in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    while feeders.tasks.join_next().await.is_some() {}
    let rate = all as f64 / seconds;
    println!("projectors catching up from Kafka: {all} events, each read model taking in its topics, in {seconds:.1} s ({rate:.0} events/s each)");
    Ok(rate)
}

/// Starts a Kafka-fed projector for each read model it visits.
struct KafkaFeeders {
    tasks: tokio::task::JoinSet<()>,
    kafka: rdkafka::ClientConfig,
    group: String,
    topic_prefix: String,
    stop: tokio_util::sync::CancellationToken,
}

impl ReadModelVisitor for KafkaFeeders {
    async fn visit<M: projections::ReadModel>(
        &mut self,
        projector: projections::Projector<M>,
    ) -> anyhow::Result<()> {
        let (kafka, prefix, stop) = (
            self.kafka.clone(),
            self.topic_prefix.clone(),
            self.stop.clone(),
        );
        let group = format!("{}.{}", self.group, projector.model().name());
        self.tasks.spawn(async move {
            if let Err(e) = projections::kafka::run(projector, &kafka, &group, &prefix, stop).await
            {
                eprintln!("a Kafka-fed projector could not start: {e}");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn the_summary_line_has_the_form_runs_are_compared_by() {
        let line = Summary {
            reg_ratio_c1: 0.034,
            reg_ratio_c16: 0.039,
            lag_p99_ms: 56.4,
            catchup_events_per_s: 450.0,
            relay_events_per_s: 0.0,
            rebuild_events_per_s: 470.0,
            availability_p99_ms: 161.0,
            bookings_per_s_c8: 123.0,
            chart1000_p99_ratio: 1.234,
        }
        .to_string();
        assert_eq!(
            line,
            "summary: reg_ratio_c1=0.03 reg_ratio_c16=0.04 lag_p99_ms=56 catchup_events_per_s=450 relay_events_per_s=0 rebuild_events_per_s=470 availability_p99_ms=161 bookings_per_s_c8=123 chart1000_p99_ratio=1.23"
        );
    }
}
