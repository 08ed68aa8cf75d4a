//! `patient-service-tools bench-schedule`: availability for `--practitioners` practitioners over
//! `--days` days (p50, p99), on an empty calendar and again once `--bookings` are booked, and
//! bookings per second at each concurrency, all over real HTTP on one database.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{Duration as Span, Utc};
use clap::Args;
use serde_json::json;

use command_api::auth::{Authenticator, Role};
use command_api::configuration::Settings;
use command_api::http::system_clock;
use command_api::startup::{Roles, Service};

use crate::idp::Tokens;

#[derive(Debug, Clone, Args)]
pub struct BenchScheduleArgs {
    #[arg(long, default_value_t = 50)]
    pub practitioners: usize,
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Availability requests timed per phase.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Bookings per concurrency level.
    #[arg(long, default_value_t = 2000)]
    pub bookings: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
}

/// Runs the benchmark and prints its figures.
///
/// # Errors
///
/// When the service cannot start or a request fails.
pub async fn run(settings: &Settings, args: BenchScheduleArgs) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    settings.http.port = 0;
    settings.database.max_connections = settings.database.max_connections.max(32);
    let service = Service::start(&settings, Roles::ALL, system_clock()).await?;
    let tokens = Tokens::Development(Box::new(Authenticator::new(&settings.auth)));
    let result = measure(&tokens, &service, &args).await;
    service.stop().await?;
    result.map(|_| ())
}

/// What the scheduling benchmark found.
#[derive(Debug, Default)]
pub struct ScheduleFigures {
    /// Availability p99 once the bookings are in, in milliseconds.
    pub availability_after_p99_ms: f64,
    /// Bookings made (201) per second at each concurrency.
    pub bookings_per_s: Vec<(usize, f64)>,
}

/// Sets up the resources, times availability and bookings, prints the figures and returns
/// them.
pub(crate) async fn measure(
    tokens: &Tokens,
    service: &Service,
    args: &BenchScheduleArgs,
) -> anyhow::Result<ScheduleFigures> {
    let base = format!("http://127.0.0.1:{}", service.port.context("no API")?);
    let admin = tokens.mint("bench-admin", &[Role::Admin])?;
    let registrar = tokens.mint("bench-registrar", &[Role::Registrar])?;
    let scheduler = tokens.mint("bench-scheduler", &[Role::Scheduler])?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let days = ["mon", "tue", "wed", "thu", "fri"];
    let template = json!({
        "time_zone": "Europe/Zurich",
        "slot_minutes": 15,
        "hours": days.iter().map(|d| json!({ "weekday": d, "start": "08:00", "end": "17:00" })).collect::<Vec<_>>(),
        "breaks": days.iter().map(|d| json!({ "weekday": d, "start": "12:00", "end": "13:00" })).collect::<Vec<_>>(),
    });
    for p in 0..args.practitioners {
        for (path, body) in [
            (
                format!("/v1/resources/bench-dr-{p}"),
                json!({ "kind": "practitioner", "name": format!("Dr {p}"), "specialty": "general", "template": template }),
            ),
            (
                format!("/v1/resources/bench-room-{p}"),
                json!({ "kind": "room", "name": format!("Room {p}"), "room_type": "consult" }),
            ),
        ] {
            let response = client
                .put(format!("{base}{path}"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
        }
    }
    let response = client
        .put(format!("{base}/v1/services/bench-consult"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "Consultation", "minutes": 30, "specialty": "general", "room_type": "consult" }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "service: {}",
        response.status()
    );
    // Four patients per practitioner: each patient's bookings are at distinct times.
    let mut patients = Vec::new();
    for n in 0..args.practitioners * 4 {
        patients
            .push(crate::population::register(&client, &base, &registrar, 3_000_000 + n).await?);
    }
    let from = (Utc::now() + Span::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let to = from + Span::days(args.days);
    let availability_url = format!(
        "{base}/v1/availability?service=bench-consult&from={}&to={}&limit=2000",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let time_availability = |label: &'static str| {
        let (client, url, token) = (client.clone(), availability_url.clone(), scheduler.clone());
        let samples = args.samples;
        async move {
            let mut times = Vec::with_capacity(samples);
            let mut slots = 0;
            for _ in 0..samples {
                let one = Instant::now();
                let response = client.get(&url).bearer_auth(&token).send().await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "availability: {}",
                    response.status()
                );
                let body: serde_json::Value = response.json().await?;
                times.push(one.elapsed());
                slots = body["slots"].as_array().map_or(0, Vec::len);
            }
            times.sort();
            let p99 = crate::measure::percentile_ms(&times, 0.99);
            println!(
                "{:<58} p50 {:>7.1} ms  p99 {:>7.1} ms ({slots} slots answered, limit 2000)",
                label,
                crate::measure::percentile_ms(&times, 0.5),
                p99
            );
            Ok::<_, anyhow::Error>(p99)
        }
    };
    println!(
        "patient-service-tools bench-schedule: {} practitioners (and rooms), {} days",
        args.practitioners, args.days
    );
    time_availability("availability, empty calendars").await?;
    // Bookings: distinct (practitioner, start) pairs through the month.
    let starts: Vec<chrono::DateTime<Utc>> = {
        let mut out = Vec::new();
        let mut day = from;
        while day < to && out.len() < 2000 {
            let weekday = day.date_naive().format("%u").to_string();
            if weekday.as_str() < "6" {
                // 08:00-12:00 local in winter (UTC+1): 07:00-11:00 UTC, every 30 minutes.
                for k in 0..8 {
                    out.push(day + Span::hours(7) + Span::minutes(30 * k));
                }
            }
            day += Span::days(1);
        }
        out
    };
    let patients = Arc::new(patients);
    let mut figures = ScheduleFigures::default();
    let mut offset = 0;
    for &concurrency in &args.concurrency {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        let first = offset;
        for _ in 0..concurrency {
            let (client, base, token, patients, next, starts) = (
                client.clone(),
                base.clone(),
                scheduler.clone(),
                patients.clone(),
                next.clone(),
                starts.clone(),
            );
            let (bookings, practitioners) = (args.bookings, args.practitioners);
            workers.spawn(async move {
                let mut conflicts = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bookings {
                        return Ok::<_, anyhow::Error>(conflicts);
                    }
                    let n = first + i;
                    let practitioner = n % practitioners;
                    let start = starts[(n / practitioners) % starts.len()];
                    let patient = &patients[practitioner * 4 + (n / practitioners / starts.len()) % 4];
                    let response = client
                        .post(format!("{base}/v1/appointments"))
                        .bearer_auth(&token)
                        .json(&json!({ "patient_id": patient, "service": "bench-consult",
                                       "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                                       "practitioner": format!("bench-dr-{practitioner}") }))
                        .send()
                        .await?;
                    match response.status().as_u16() {
                        201 => {}
                        409 => conflicts += 1,
                        other => anyhow::bail!("booking answered {other}"),
                    }
                }
            });
        }
        let mut conflicts = 0;
        while let Some(result) = workers.join_next().await {
            conflicts += result??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        figures
            .bookings_per_s
            .push((concurrency, (args.bookings - conflicts) as f64 / elapsed));
        println!(
            "{:<58} {:>8.0} bookings/s ({} requests, {conflicts} refused as taken)",
            format!("bookings, concurrency {concurrency}"),
            args.bookings as f64 / elapsed,
            args.bookings
        );
        offset += args.bookings;
    }
    figures.availability_after_p99_ms =
        time_availability("availability, after the bookings").await?;
    Ok(figures)
}
