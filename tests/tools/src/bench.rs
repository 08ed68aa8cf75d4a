//! `patient-service-tools bench`: in one run, on one database,
//!
//! - registrations per second over real HTTP at each concurrency (default 1 and 16);
//! - the baseline: `pgbench` inserting one ~500-byte JSON event per transaction into an
//!   events-shaped table in a scratch database on the same cluster, at the same concurrencies,
//!   before and after the service's run at each level ([`crate::pgbench`]);
//! - projection lag: from the moment a registration's 201 arrives (after its commit) to the
//!   moment the patient is visible in the search read model, p50 and p99.
//!
//! Runs against the configured database (or the embedded one) and Kafka if configured. The
//! machine is noisy: compare figures only within one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;

use command_api::auth::{Authenticator, Role};
use command_api::configuration::Settings;
use command_api::http::system_clock;
use command_api::startup::{Roles, Service};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Registrations (and raw inserts) per concurrency level.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Concurrency levels, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub concurrency: Vec<usize>,
    /// Registrations timed for projection lag, one at a time.
    #[arg(long, default_value_t = 200)]
    pub lag_samples: usize,
    /// Seconds each pgbench baseline run lasts (`-T`).
    #[arg(long, default_value_t = 10)]
    pub pgbench_seconds: u32,
}

/// Runs the benchmark and prints its figures on stdout.
///
/// # Errors
///
/// When the service cannot start or a request fails.
pub async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    settings.http.port = 0;
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1) as u32;
    settings.database.max_connections = settings.database.max_connections.max(max_concurrency + 8);
    let service = Service::start(&settings, Roles::ALL, system_clock()).await?;
    let result = measure(&settings, &service, &args).await;
    service.stop().await?;
    result
}

async fn measure(settings: &Settings, service: &Service, args: &BenchArgs) -> anyhow::Result<()> {
    let port = service.port.context("the API did not start")?;
    let base = format!("http://127.0.0.1:{port}");
    let token =
        Authenticator::new(&settings.auth).mint("bench", &[Role::Registrar], chrono::Utc::now())?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let source = if settings.kafka.client_config().is_some() {
        "Kafka"
    } else {
        "event-store stream"
    };
    println!(
        "patient-service-tools bench: {} requests per level, projectors fed by {source}",
        args.requests
    );
    println!(
        "{:<28} {:>12} {:>16} {:>16} {:>10}",
        "", "HTTP reg/s", "pgbench before", "pgbench after", "HTTP/raw"
    );
    for (level, &concurrency) in args.concurrency.iter().enumerate() {
        // Every level registers people of its own: the same people again would be duplicates.
        let first = level * args.requests;
        let before = crate::pgbench::tps(service, concurrency, args.pgbench_seconds).await?;
        let http =
            registrations_per_second(&client, &base, &token, first, args.requests, concurrency)
                .await?;
        let after = crate::pgbench::tps(service, concurrency, args.pgbench_seconds).await?;
        println!(
            "{:<28} {:>12.0} {:>16.0} {:>16.0} {:>10.3}",
            format!("concurrency {concurrency}"),
            http,
            before,
            after,
            http / ((before + after) / 2.0)
        );
    }
    let mut lags = projection_lags(&client, &base, &token, &service.pool, args.lag_samples).await?;
    lags.sort();
    println!(
        "projection lag, 201 -> visible in search ({} samples): p50 {:.1} ms, p99 {:.1} ms",
        lags.len(),
        crate::measure::percentile_ms(&lags, 0.50),
        crate::measure::percentile_ms(&lags, 0.99)
    );
    Ok(())
}

pub(crate) async fn registrations_per_second(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    first: usize,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, base, token, next) = (
            client.clone(),
            base.to_owned(),
            token.to_owned(),
            next.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, anyhow::Error>(());
                }
                crate::population::register(&client, &base, &token, first + i).await?;
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

async fn projection_lags(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    pool: &PgPool,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut lags = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = crate::population::register(client, base, token, 1_000_000 + i).await?;
        let id = uuid::Uuid::parse_str(&id)?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(30);
        loop {
            let visible: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM projections.patient_search WHERE patient_id = $1)",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            if visible {
                lags.push(committed.elapsed());
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "patient {id} not projected within 30 s"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    Ok(lags)
}
