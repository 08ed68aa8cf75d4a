//! `patient-service-tools soak`: the service killed under load.
//!
//! A PostgreSQL cluster of its own (so that it can be restarted) and a nisshi broker storing
//! its topics in it (durable: a restart keeps them); two `api` processes, a `relay` and two
//! `project` processes (one consumer group; they run the process managers too), each the real
//! binary. Workers register patients (with a clinician in their care), change their contact
//! information, record allergies, book and cancel appointments, each request with an
//! `Idempotency-Key` and, when its connection breaks, sent once more to the other API with the
//! same key. Meanwhile a schedule drawn from the seed (printed, so a failure can be replayed)
//! kills a process with SIGKILL and starts it again, restarts PostgreSQL once and the broker
//! once.
//!
//! Afterwards: every process is running and ready (those not killed came back by themselves);
//! every command answered 2xx is in the event store (its key in an event's metadata); once the
//! relay has passed every event and every projector's consumer group has read every partition
//! to its end (a killed member's partitions wait for the broker to expire its session), `audit
//! verify` passes and `patient-service reconcile --read-models` finds every stored event on its
//! topic, nothing else there, and the read models equal to a fresh rebuild; no resource is
//! booked twice at one time. One closing line:
//! `soak: seed=.. seconds=.. acknowledged=.. found=.. events=.. on_topics=.. repeats=..
//! retried=.. kills=.. restarts=.. pg_restarts=1 broker_restarts=1`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use chrono::{Datelike, Utc};
use command_api::auth::{Authenticator, Role};
use command_api::configuration::Settings;
use command_api::embedded_postgres::EmbeddedPostgres;
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// The seed of the kill schedule and the load (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Workers sending requests at once.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// The service's binary (default: `patient-service` beside this one).
    #[arg(long)]
    pub service_bin: Option<PathBuf>,
    /// The nisshi broker's binary (the test script builds it into its cache).
    #[arg(long, env = "NISSHI_BIN")]
    pub nisshi: PathBuf,
}

/// A generator of the schedule and the load: xorshift64*, so a seed replays a run.
#[derive(Debug, Clone)]
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A process of the service, started again after each kill.
struct Process {
    name: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Where its readiness is answered.
    ready_url: String,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL: nothing is flushed, nothing is closed.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// SIGTERM, then waits for it to stop.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .ok();
            }
            child.wait().ok();
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Process {
    /// A soak that fails leaves nothing running.
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `bin` with `args` to its end; its stderr on failure.
fn run_to_end(bin: &Path, args: &[&str], envs: &[(String, String)]) -> anyhow::Result<String> {
    let output = Command::new(bin)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()?;
    ensure!(
        output.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What the load was answered.
#[derive(Debug, Default)]
struct Ledger {
    /// The keys of the requests answered 2xx.
    acknowledged: Vec<String>,
    /// Requests sent again with their key after a broken connection, and answered 2xx.
    retried: u64,
    /// Appointments booked (2xx) and whether their cancellation was answered 2xx.
    appointments: HashMap<String, bool>,
}

/// The load's requests: each to one API, again to the other with the same key when the
/// connection breaks. Answers `(status, body, etag)`; `None` when neither answered.
struct Client {
    http: reqwest::Client,
    apis: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
}

impl Client {
    async fn send(
        &self,
        draw: &mut Draw,
        method: reqwest::Method,
        path: &str,
        token: &str,
        (body, version): (&Value, Option<u64>),
    ) -> Option<(u16, Value, Option<u64>)> {
        let key = uuid::Uuid::new_v4().to_string();
        let first = draw.below(self.apis.len() as u64) as usize;
        for attempt in 0..2 {
            let api = &self.apis[(first + attempt) % self.apis.len()];
            let mut request = self
                .http
                .request(method.clone(), format!("{api}{path}"))
                .bearer_auth(token)
                .header("idempotency-key", &key)
                .json(body);
            if let Some(version) = version {
                request = request.header("if-match", format!("\"{version}\""));
            }
            let Ok(response) = request.send().await else {
                continue;
            };
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse().ok());
            let Ok(body) = response.json::<Value>().await else {
                continue;
            };
            if (200..300).contains(&status) {
                let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
                ledger.acknowledged.push(key);
                if attempt > 0 {
                    ledger.retried += 1;
                }
            }
            return Some((status, body, etag));
        }
        None
    }
}

/// One worker's patients: id and the version it last saw.
async fn work(
    client: Arc<Client>,
    tokens: Arc<(String, String, String)>,
    mut draw: Draw,
    worker: usize,
    until: Instant,
) {
    let (registrar, clinician, scheduler) = (&tokens.0, &tokens.1, &tokens.2);
    let mut patients: Vec<(String, u64)> = Vec::new();
    let mut booked: Vec<(String, u64)> = Vec::new();
    let mut n = 0u64;
    let monday = {
        let today = Utc::now().date_naive();
        today + chrono::Days::new(u64::from(7 - today.weekday().num_days_from_monday()))
    };
    while Instant::now() < until {
        n += 1;
        let choice = if patients.is_empty() {
            0
        } else {
            draw.below(10)
        };
        match choice {
            0..=2 => {
                let body = json!({
                    "name": { "given": [format!("Soak{worker}")], "family": format!("Load{n}") },
                    "gender": "female",
                    "birth_date": format!("19{:02}-0{}-1{}", 40 + n % 60, 1 + n % 9, n % 10),
                    "duplicate_override": { "reason": "soak load" },
                });
                let Some((201, body, Some(version))) = client
                    .send(
                        &mut draw,
                        reqwest::Method::POST,
                        "/v1/patients",
                        registrar,
                        (&body, None),
                    )
                    .await
                else {
                    continue;
                };
                let Some(id) = body["id"].as_str().map(str::to_owned) else {
                    continue;
                };
                let care = json!({ "practitioner": "soak-clinician", "role": "attending" });
                let path = format!("/v1/patients/{id}/care-relationships");
                if let Some((200, _, Some(version))) = client
                    .send(
                        &mut draw,
                        reqwest::Method::POST,
                        &path,
                        registrar,
                        (&care, Some(version)),
                    )
                    .await
                {
                    patients.push((id, version));
                }
            }
            3..=4 => {
                let at = draw.below(patients.len() as u64) as usize;
                let (id, version) = patients[at].clone();
                let body =
                    json!({ "phones": [{ "number": format!("+4144{:07}", n % 10_000_000) }] });
                let path = format!("/v1/patients/{id}/contact");
                if let Some((status, _, etag)) = client
                    .send(
                        &mut draw,
                        reqwest::Method::PUT,
                        &path,
                        registrar,
                        (&body, Some(version)),
                    )
                    .await
                {
                    if let (200, Some(version)) = (status, etag) {
                        patients[at].1 = version;
                    }
                }
            }
            5..=6 => {
                let (id, _) = &patients[draw.below(patients.len() as u64) as usize];
                let body = json!({
                    "substance": { "text": format!("substance {n}") },
                    "clinical_status": "active",
                });
                let path = format!("/v1/patients/{id}/allergies");
                client
                    .send(
                        &mut draw,
                        reqwest::Method::POST,
                        &path,
                        clinician,
                        (&body, None),
                    )
                    .await;
            }
            7..=8 => {
                let (id, _) = &patients[draw.below(patients.len() as u64) as usize];
                let day = monday + chrono::Days::new(draw.below(5));
                let minutes = 8 * 60 + 15 * draw.below(32);
                let start = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
                    + chrono::Duration::minutes(i64::try_from(minutes).unwrap_or(0) - 60);
                let body = json!({
                    "patient_id": id,
                    "service": "soak-consult",
                    "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
                if let Some((201, body, Some(version))) = client
                    .send(
                        &mut draw,
                        reqwest::Method::POST,
                        "/v1/appointments",
                        scheduler,
                        (&body, None),
                    )
                    .await
                {
                    if let Some(appointment) = body["id"].as_str() {
                        booked.push((appointment.to_owned(), version));
                        let mut ledger = client.ledger.lock().unwrap_or_else(|e| e.into_inner());
                        ledger.appointments.insert(appointment.to_owned(), false);
                    }
                }
            }
            _ => {
                if booked.is_empty() {
                    continue;
                }
                let (appointment, version) =
                    booked.swap_remove(draw.below(booked.len() as u64) as usize);
                let path = format!("/v1/appointments/{appointment}/cancel");
                let body = json!({ "reason": "patient" });
                if let Some((200, _, _)) = client
                    .send(
                        &mut draw,
                        reqwest::Method::POST,
                        &path,
                        scheduler,
                        (&body, Some(version)),
                    )
                    .await
                {
                    let mut ledger = client.ledger.lock().unwrap_or_else(|e| e.into_inner());
                    ledger.appointments.insert(appointment, true);
                }
            }
        }
    }
}

/// Polls `check` until it holds, or fails naming `what` after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Runs the soak and prints its closing line.
///
/// # Errors
///
/// When something it checks afterwards does not hold, or a process or tool cannot run.
pub async fn run(_settings: &Settings, args: SoakArgs) -> anyhow::Result<()> {
    let seed = args
        .seed
        .unwrap_or_else(|| u64::try_from(Utc::now().timestamp_micros()).unwrap_or(1) | 1);
    println!("soak: seed {seed} (replay with --seed {seed})");
    let bin = match &args.service_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("patient-service"),
    };
    let folder = std::env::temp_dir().join(format!("soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&folder)?;
    let cluster = EmbeddedPostgres::start(&folder.join("pg")).await?;
    let result = soak(&args, seed, &bin, &folder, &cluster).await;
    cluster.stop_now().ok();
    if result.is_ok() {
        std::fs::remove_dir_all(&folder).ok();
    } else {
        eprintln!("soak: the processes' logs are in {}", folder.display());
    }
    result
}

#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn soak(
    args: &SoakArgs,
    seed: u64,
    bin: &Path,
    folder: &Path,
    cluster: &EmbeddedPostgres,
) -> anyhow::Result<()> {
    let mut draw = Draw(seed);
    let pool = sqlx::PgPool::connect(&cluster.database_url()).await?;
    sqlx::query("CREATE DATABASE broker").execute(&pool).await?;
    // The broker's topics in PostgreSQL: a restart keeps them.
    let broker_port = free_port()?;
    let listener = format!("tcp://127.0.0.1:{broker_port}");
    let mut broker = Process {
        name: "broker".into(),
        args: [
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--group-initial-rebalance-delay",
            "0s",
            "--storage-engine",
            &format!("{}?sslmode=disable", cluster.url("broker")),
            "--silent",
        ]
        .map(str::to_owned)
        .to_vec(),
        envs: Vec::new(),
        ready_url: String::new(),
        log: folder.join("broker.log"),
        child: None,
        starts: 0,
    };
    broker.start(&args.nisshi)?;
    let key = |n: u8| base64::engine::general_purpose::STANDARD.encode([n; 32]);
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let common: Vec<(String, String)> = [
        ("DATABASE_URL", cluster.database_url()),
        ("KAFKA_BROKERS", format!("127.0.0.1:{broker_port}")),
        ("APP_SECURITY__MASTER_KEY", key(7)),
        ("APP_SECURITY__AUDIT_KEY", key(9)),
        ("APP_AUTH__JWT_SECRET", secret.clone()),
        ("APP_KAFKA__TOPIC_PREFIX", "soak.".to_owned()),
        ("APP_KAFKA__MESSAGE_TIMEOUT_MS", "5000".to_owned()),
        ("APP_DATABASE__AUTO_MIGRATE", "false".to_owned()),
        ("APP_DATABASE__MAX_CONNECTIONS", "8".to_owned()),
        ("APP_LOG__LEVEL", "warn".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec();
    run_to_end(bin, &["migrate"], &common)?;
    let mut processes = Vec::new();
    for (name, role) in [
        ("api-1", "api"),
        ("api-2", "api"),
        ("relay", "relay"),
        ("project-1", "project"),
        ("project-2", "project"),
    ] {
        let port = free_port()?;
        let mut envs = common.clone();
        envs.push((
            if role == "api" {
                "APP_HTTP__PORT"
            } else {
                "APP_HEALTH__PORT"
            }
            .to_owned(),
            port.to_string(),
        ));
        let mut process = Process {
            name: name.to_owned(),
            args: vec![role.to_owned()],
            envs,
            ready_url: format!("http://127.0.0.1:{port}/health/ready"),
            log: folder.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        process.start(bin)?;
        processes.push(process);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for process in &processes {
        until(
            &format!("{} ready", process.name),
            Duration::from_secs(120),
            || ready(&http, &process.ready_url),
        )
        .await?;
    }
    let apis: Vec<String> = processes[..2]
        .iter()
        .map(|p| p.ready_url.trim_end_matches("/health/ready").to_owned())
        .collect();

    // Who works: tokens of the same secret the processes check.
    let mut settings = Settings::base()?;
    settings.auth.jwt_secret = secrecy::SecretString::from(secret);
    let auth = Authenticator::new(&settings.auth);
    let admin = auth.mint("soak-admin", &[Role::Admin], Utc::now())?;
    let tokens = Arc::new((
        auth.mint("soak-registrar", &[Role::Registrar], Utc::now())?,
        auth.mint("soak-clinician", &[Role::Clinician], Utc::now())?,
        auth.mint("soak-scheduler", &[Role::Scheduler], Utc::now())?,
    ));
    let days = ["mon", "tue", "wed", "thu", "fri"];
    for (path, body) in [
        (
            "/v1/resources/soak-dr",
            json!({ "kind": "practitioner", "name": "Dr Soak", "specialty": "general", "template": {
                "time_zone": "Europe/Zurich", "slot_minutes": 15,
                "hours": days.iter().map(|d| json!({ "weekday": d, "start": "08:00", "end": "17:00" })).collect::<Vec<_>>(),
            } }),
        ),
        (
            "/v1/resources/soak-room",
            json!({ "kind": "room", "name": "Room", "room_type": "consult" }),
        ),
        (
            "/v1/services/soak-consult",
            json!({ "name": "Consultation", "minutes": 30, "specialty": "general", "room_type": "consult" }),
        ),
    ] {
        let response = http
            .put(format!("{}{path}", apis[0]))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }

    // The load, and the schedule of kills.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = Arc::new(Client {
        http: http.clone(),
        apis: apis.clone(),
        ledger: ledger.clone(),
    });
    let started = Instant::now();
    let load_until = started + Duration::from_secs(args.seconds);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.workers {
        let worker_draw = Draw(draw.next() | 1);
        workers.spawn(work(
            client.clone(),
            tokens.clone(),
            worker_draw,
            worker,
            load_until,
        ));
    }
    let kills_planned = (args.seconds / 8).max(4);
    let step = Duration::from_secs(args.seconds) / u32::try_from(kills_planned + 1).unwrap_or(1);
    let (mut kills, mut pg_restarts, mut broker_restarts) = (0u32, 0u32, 0u32);
    for n in 1..=kills_planned {
        tokio::time::sleep_until((started + step * u32::try_from(n).unwrap_or(0)).into()).await;
        if n == kills_planned / 3 {
            println!("soak: restarting PostgreSQL");
            cluster.restart()?;
            pg_restarts += 1;
        } else if n == 2 * kills_planned / 3 {
            println!("soak: restarting the broker");
            broker.kill();
            broker.start(&args.nisshi)?;
            broker_restarts += 1;
        } else {
            let at = draw.below(processes.len() as u64) as usize;
            let process = &mut processes[at];
            println!("soak: killing {} (SIGKILL)", process.name);
            process.kill();
            tokio::time::sleep(Duration::from_millis(500 + draw.below(1500))).await;
            process.start(bin)?;
            kills += 1;
        }
    }
    while workers.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs();

    // Every process running and ready: none of those not killed died of the restarts.
    for process in &mut processes {
        ensure!(
            process.running(),
            "{} is not running (see {})",
            process.name,
            process.log.display()
        );
    }
    for process in &processes {
        until(
            &format!("{} ready again", process.name),
            Duration::from_secs(120),
            || ready(&http, &process.ready_url),
        )
        .await?;
    }

    // Every acknowledged command is in the store.
    let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let found: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT metadata->>'idempotency_key') FROM events
          WHERE metadata->>'idempotency_key' = ANY($1)",
    )
    .bind(&ledger.acknowledged)
    .fetch_one(&pool)
    .await?;
    let acknowledged = ledger.acknowledged.len();
    ensure!(
        usize::try_from(found).unwrap_or(0) == acknowledged,
        "{acknowledged} commands acknowledged, {found} found in the store"
    );

    // The relay has passed every stored event (the topics are compared at the end).
    until(
        "every event published",
        Duration::from_secs(180),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events e WHERE NOT EXISTS (
                SELECT 1 FROM relay_checkpoints c
                 WHERE (e.transaction_id, e.position) <= (c.transaction_id, c.position))",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|unpublished| unpublished == 0)
        },
    )
    .await?;

    // No practitioner booked twice at one time.
    let mut claims: Vec<(String, i64, i64)> = Vec::new();
    for (appointment, cancelled) in &ledger.appointments {
        let response = http
            .get(format!("{}/v1/appointments/{appointment}", apis[0]))
            .bearer_auth(&tokens.2)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "appointment {appointment}: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        let status = body["status"].as_str().unwrap_or_default();
        ensure!(
            !cancelled || status == "cancelled",
            "appointment {appointment}: cancelled (2xx) but {status}"
        );
        if ["booked", "pending", "arrived", "checked-in"].contains(&status) {
            let interval = &body["booking"]["interval"];
            let at = |k: &str| {
                interval[k]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp())
            };
            let (Some(start), Some(end)) = (at("start"), at("end")) else {
                bail!("appointment {appointment} has no times: {body}");
            };
            // The practitioner, the room: none claimed twice at one time.
            for resource in body["booking"]["resources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let resource = resource.as_str().unwrap_or_default().to_owned();
                claims.push((resource, start, end));
            }
        }
    }
    claims.sort();
    for pair in claims.windows(2) {
        ensure!(
            pair[0].0 != pair[1].0 || pair[0].2 <= pair[1].1,
            "booked twice: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }

    // Every read model's consumer group has read every partition to its end (a killed
    // member's partitions wait for the broker to expire its session, 45 s, first).
    let brokers = format!("127.0.0.1:{broker_port}");
    until(
        "the read models caught up",
        Duration::from_secs(240),
        || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || caught_up(&brokers))
                    .await
                    .unwrap_or(Ok(false))
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    // And settled: nothing changed for two seconds.
    let settled = || async {
        let audit_log: anyhow::Result<i64> =
            sqlx::query_scalar("SELECT count(*) FROM projections.audit_log")
                .fetch_one(&pool)
                .await
                .map_err(Into::into);
        Ok::<_, anyhow::Error>((digests(&pool).await?, audit_log?))
    };
    let mut last = settled().await?;
    let mut steady = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while steady < 8 {
        ensure!(Instant::now() < deadline, "the read models never settled");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = settled().await?;
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }

    // The audit chains verify, every stored event audited.
    run_to_end(bin, &["audit", "verify"], &common)?;

    // Every stored event is on its topic, nothing else is, and the read models equal a fresh
    // rebuild: `reconcile --read-models`, the projectors stopped.
    for process in processes
        .iter_mut()
        .filter(|p| p.name.starts_with("project"))
    {
        process.stop();
    }
    let report = run_to_end(bin, &["reconcile", "--read-models"], &common)?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    let (on_topics, repeats) = published(&report);

    for process in &mut processes {
        process.stop();
    }
    broker.kill();
    let restarts: u32 = processes.iter().map(|p| p.starts - 1).sum();
    println!(
        "soak: seed={seed} seconds={seconds} acknowledged={acknowledged} found={found} \
         events={} on_topics={} repeats={repeats} retried={} kills={kills} restarts={restarts} \
         pg_restarts={pg_restarts} broker_restarts={broker_restarts}",
        events, on_topics, ledger.retried,
    );
    Ok(())
}

/// The events `reconcile` found published and the repeats it counted, summed over its
/// `<topic>: N events published, ...` and `<topic> [p]: N records, R repeats` lines.
fn published(report: &str) -> (u64, u64) {
    let number_before = |line: &str, word: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|at| words.get(at.checked_sub(1)?)?.parse().ok())
            .unwrap_or(0)
    };
    report.lines().fold((0, 0), |(events, repeats), line| {
        if line.contains(" events published") {
            (events + number_before(line, "events"), repeats)
        } else if line.contains(" repeats") {
            (events, repeats + number_before(line, "repeats"))
        } else {
            (events, repeats)
        }
    })
}

/// Whether every projector's consumer group (`soak.patient-service.<read model>`) has
/// committed, on every partition of each topic it consumes, the partition's end.
fn caught_up(brokers: &str) -> anyhow::Result<bool> {
    let config = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .clone();
    let lags = command_api::kafka_lag::consumer_group_lags(
        &config,
        ("soak.", "patient-service"),
        Duration::from_secs(5),
    )?;
    ensure!(!lags.is_empty(), "no projector's consumer group");
    Ok(lags.iter().all(|group| group.lag == 0))
}

/// A digest of each read model table the load fills.
async fn digests(pool: &sqlx::PgPool) -> anyhow::Result<Vec<Option<String>>> {
    let mut digests = Vec::new();
    for table in [
        "patient_search",
        "patient_match",
        "medical_record_items",
        "appointments",
    ] {
        digests.push(
            sqlx::query_scalar(&format!(
                "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM projections.{table} t"
            ))
            .fetch_one(pool)
            .await?,
        );
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_counts_are_summed() {
        let report = "soak.patients.patient.v1 [0]: 10 records, 2 repeats\n\
                      soak.patients.patient.v1 [1]: 5 records, 0 repeats\n\
                      soak.patients.patient.v1: 13 events published, 0 not yet published (after the relay's checkpoint)\n\
                      soak.patients.access.v1: 4 events published, 0 not yet published (after the relay's checkpoint)\n\
                      read models: equal to a rebuild\nreconcile: differences=0\n";
        assert_eq!(published(report), (17, 2));
    }
}
