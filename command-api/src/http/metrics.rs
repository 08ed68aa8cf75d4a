//! `GET /metrics`: this process and the pipeline it sees, in the OpenMetrics text format
//! (Prometheus scrapes it). Counts, durations and ages only, no ids and no patient data, so it
//! needs no token (like the health checks); keep it on the internal network.
//!
//! Of this process (since it started):
//! - `patient_service_http_request_duration_seconds{method,route,status}`: a histogram of the
//!   requests answered, by route template (never the path, which may hold what a caller typed).
//! - `patient_service_commands_total{aggregate_type,outcome}`: commands by the aggregate they
//!   ran on and how they ended (`stored`, `refused` by a rule, `version-mismatch`, `conflict`,
//!   `likely-duplicate`, `key-taken`, `busy`, `unavailable`, `failed`).
//! - `patient_service_events_appended_total{aggregate_type}`: events committed.
//! - `patient_service_db_pool_connections{state}` (`in_use`, `idle`) and
//!   `patient_service_db_pool_max_connections`.
//! - `patient_service_emergency_access_granted_total`, `..._refused_total` (the per-user hourly
//!   limit), `patient_service_access_denied_total`.
//! - `patient_service_state_cache_hits_total`, `..._misses_total`: loads of a long stream (a
//!   medical record) served from the state kept in memory, or not. (Data keys are not cached:
//!   each command reads its one key in its transaction, each relay or projector batch its
//!   keys in one query.)
//!
//! Of the pipeline, read from the database at each scrape (the same for every process):
//! - `patient_service_relay_backlog_events{relay}` and `..._seconds`: events stored but not yet
//!   published, and the age of the oldest of them.
//! - `patient_service_read_model_lag_events{read_model}` and `..._seconds`: the same for each
//!   read model fed from the event store (without Kafka; with Kafka, its consumer group's lag
//!   is the broker's to report), and `patient_service_process_manager_lag_events{process_manager}`
//!   and `..._seconds` for the process managers.
//! - `patient_service_parked_messages{projector,reason}`: records a projector could not use.
//! - `patient_service_xmin_horizon_age_seconds`: how long the oldest transaction holding back
//!   the database's xmin horizon has run. The relay and the read models publish only what
//!   every transaction before it has ended, so a long one elsewhere stops them: this shows it.
//!   (The database user needs `pg_monitor`, or to be the owner of those sessions, to see them.)
//! - `patient_service_metrics_database_up`: 0 when those could not be read.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::openapi::{self as doc, Routes};
use crate::http::AppState;

/// The longest the database is asked for the pipeline's figures at one scrape.
pub(super) const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most unpublished or unapplied events counted one by one; beyond, the figure is this.
const BACKLOG_COUNTED: i64 = 1_000_000;

pub fn router() -> Routes {
    Routes::new().route(
        "/metrics",
        get(metrics),
        [
            doc::get("Metrics, in the OpenMetrics text format").answers_as(
                200,
                "The metrics",
                "application/openmetrics-text",
                serde_json::json!({ "type": "string" }),
            ),
        ],
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The request durations of this process, shared by the middleware that observes them and
/// the scrape.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    durations: Durations,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 1 ms to about 33 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        }
        Self {
            durations: Family::new_with_constructor(histogram),
        }
    }
}

/// Observes how long each request took, by method, route template and status.
pub async fn observe(State(metrics): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(req).await;
    metrics
        .durations
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    aggregate_type: String,
    outcome: String,
}

/// One label, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Named {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Parked {
    projector: String,
    reason: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// A counter holding `value`.
fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

/// A gauge holding `value`.
fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

fn seconds(value: f64) -> Seconds {
    let gauge = Seconds::default();
    gauge.set(value);
    gauge
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut registry = Registry::with_prefix("patient_service");
    registry.register(
        "http_request_duration_seconds",
        "Requests answered, by method, route template and status",
        state.http_metrics.durations.clone(),
    );
    let commands = Family::<CommandLabels, Counter>::default();
    for (aggregate_type, outcome, n) in event_store::metrics::commands() {
        commands
            .get_or_create(&CommandLabels {
                aggregate_type: aggregate_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }
    registry.register(
        "commands",
        "Commands by the aggregate they ran on and how they ended",
        commands,
    );
    let appended = Family::<Named, Counter>::default();
    for (aggregate_type, n) in event_store::metrics::appended_events() {
        appended
            .get_or_create(&Named {
                name: aggregate_type,
            })
            .inc_by(n);
    }
    registry.register(
        "events_appended",
        "Events committed by this process, by aggregate type (label name)",
        appended,
    );
    let counters = state.access.counters();
    for (name, help, value) in [
        (
            "emergency_access_granted",
            "Break-the-glass accesses granted",
            &counters.emergency_granted,
        ),
        (
            "emergency_access_refused",
            "Break-the-glass accesses refused by the per-user hourly limit",
            &counters.emergency_refused,
        ),
        (
            "access_denied",
            "Accesses to a patient's data refused",
            &counters.denied,
        ),
    ] {
        registry.register(name, help, counter(value.load(Ordering::Relaxed)));
    }
    let (hits, misses) = event_store::states::counts();
    registry.register(
        "state_cache_hits",
        "Loads of a long stream (a medical record) served from the state kept in memory",
        counter(hits),
    );
    registry.register(
        "state_cache_misses",
        "Loads of a long stream that found no state kept (read from its snapshot and events)",
        counter(misses),
    );
    let pool = Family::<Named, Gauge>::default();
    let (size, idle) = (
        i64::from(state.pool.size()),
        i64::try_from(state.pool.num_idle()).unwrap_or(i64::MAX),
    );
    pool.get_or_create(&Named {
        name: "in_use".into(),
    })
    .set(size - idle);
    pool.get_or_create(&Named {
        name: "idle".into(),
    })
    .set(idle);
    registry.register(
        "db_pool_connections",
        "Connections of this process's pool, by state (label name)",
        pool,
    );
    registry.register(
        "db_pool_max_connections",
        "The most connections this process's pool opens",
        gauge(i64::from(state.pool.options().get_max_connections())),
    );
    if let Some(kafka) = &state.kafka {
        register_kafka_lag(&mut registry, kafka).await;
    }
    let pipeline = tokio::time::timeout(DATABASE_TIMEOUT, Pipeline::read(&state.pool)).await;
    let up = match pipeline {
        Ok(Ok(pipeline)) => {
            pipeline.register(&mut registry);
            1
        }
        Ok(Err(e)) => {
            tracing::warn!(error.message = %e, "the pipeline's metrics could not be read");
            0
        }
        Err(_) => {
            tracing::warn!("the pipeline's metrics took too long to read");
            0
        }
    };
    registry.register(
        "metrics_database_up",
        "Whether the pipeline's figures could be read from the database at this scrape",
        gauge(up),
    );
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        tracing::error!(error.message = %e, "the metrics could not be encoded");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Each projector's consumer group lag on the broker, in records; `kafka_lag_up` 0 when the
/// broker did not answer within [`DATABASE_TIMEOUT`].
async fn register_kafka_lag(registry: &mut Registry, kafka: &crate::configuration::KafkaSettings) {
    let up = match crate::kafka_lag::read(kafka, DATABASE_TIMEOUT).await {
        Ok(lags) => {
            let family = Family::<Named, Gauge>::default();
            for group in lags {
                family
                    .get_or_create(&Named { name: group.model })
                    .set(group.lag);
            }
            registry.register(
                "read_model_kafka_lag_events",
                "Records not yet read by each read model's consumer group (label name), with Kafka",
                family,
            );
            1
        }
        Err(e) => {
            tracing::warn!(error.message = %e, "the consumer group lag could not be read");
            0
        }
    };
    registry.register(
        "kafka_lag_up",
        "1 when the consumer groups' lag was read from the broker",
        gauge(up),
    );
}

/// A stream reader's distance behind the event store: its name, the events after its
/// checkpoint (at most [`BACKLOG_COUNTED`]) and the age of the oldest of them in seconds.
pub(super) type Behind = Vec<(String, i64, f64)>;

/// The pipeline's figures, from the database.
pub(super) struct Pipeline {
    pub(super) relays: Behind,
    pub(super) read_models: Behind,
    pub(super) process_managers: Behind,
    parked: Vec<projections::runtime::ParkedCount>,
    horizon_age: f64,
}

impl Pipeline {
    /// Read in one read-only transaction whose statements the server stops after
    /// [`DATABASE_TIMEOUT`] (a scrape that gave up must not leave them running).
    pub(super) async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "SET LOCAL statement_timeout = {}",
            DATABASE_TIMEOUT.as_millis()
        ))
        .execute(&mut *tx)
        .await?;
        let conn = &mut *tx;
        Ok(Self {
            relays: behind(conn, "relay_checkpoints", "relay").await?,
            read_models: behind(conn, "projections.stream_checkpoints", "projector").await?,
            process_managers: behind(conn, "process_manager_checkpoints", "name").await?,
            parked: projections::runtime::parked_counts(&mut *conn).await?,
            horizon_age: sqlx::query_scalar(
                "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
                   FROM pg_stat_activity
                  WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut *conn)
            .await?,
        })
    }

    fn register(self, registry: &mut Registry) {
        for (what, label, rows) in [
            ("relay_backlog", "relay", self.relays),
            ("read_model_lag", "read model", self.read_models),
            (
                "process_manager_lag",
                "process manager",
                self.process_managers,
            ),
        ] {
            let events = Family::<Named, Gauge>::default();
            let ages = Family::<Named, Seconds>::default();
            for (name, n, age) in rows {
                events.get_or_create(&Named { name: name.clone() }).set(n);
                ages.get_or_create(&Named { name }).set(age);
            }
            registry.register(
                format!("{what}_events"),
                format!("Events stored and not yet read, per {label} (label name)"),
                events,
            );
            registry.register(
                format!("{what}_seconds"),
                format!("Age of the oldest event not yet read, per {label} (label name)"),
                ages,
            );
        }
        let parked = Family::<Parked, Gauge>::default();
        for count in self.parked {
            parked
                .get_or_create(&Parked {
                    projector: count.projector,
                    reason: count.reason,
                })
                .set(count.count);
        }
        registry.register(
            "parked_messages",
            "Records a projector could not use, kept aside, by projector and reason",
            parked,
        );
        registry.register(
            "xmin_horizon_age_seconds",
            "How long the oldest transaction holding back the xmin horizon has run",
            seconds(self.horizon_age),
        );
    }
}

/// How far behind the event store each reader of `table` (its name in `name_column`) is.
/// (The read models keep their transaction ids as numbers, the relay and process managers as
/// `xid8`: both are compared as `xid8`.)
async fn behind(
    conn: &mut sqlx::PgConnection,
    table: &str,
    name_column: &str,
) -> Result<Behind, sqlx::Error> {
    // The table and column names are this module's constants, never input.
    sqlx::query_as(&format!(
        "SELECT c.{name_column}, b.n, b.age
           FROM {table} c,
           LATERAL (SELECT count(*) AS n,
                           coalesce(extract(epoch FROM now() - min(e.recorded_at)), 0)::float8
                             AS age
                      FROM (SELECT recorded_at FROM events e
                             WHERE (e.transaction_id, e.position)
                                   > (c.transaction_id::text::xid8, c.position)
                             LIMIT $1) e) b
          ORDER BY 1"
    ))
    .bind(BACKLOG_COUNTED)
    .fetch_all(conn)
    .await
}
