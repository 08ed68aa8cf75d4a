//! Proofs that the write path loses nothing: the gap-free relay under concurrent writers with a
//! transaction held open, a broker outage, and a relay killed mid-stream.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_api::startup::Roles;
use rdkafka::message::{Message, OwnedMessage};
use serde_json::json;

use crate::helpers::*;

/// Checks per-aggregate order and returns the distinct event ids seen.
fn assert_in_order_per_aggregate(records: &[OwnedMessage]) -> HashSet<String> {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for record in records {
        let sequence: u64 = header(record, "ce_sequence").unwrap().parse().unwrap();
        let previous = last.entry(key(record)).or_insert(0);
        // A re-send may repeat earlier events, but a first delivery never skips one.
        if ids.insert(header(record, "ce_id").unwrap()) && sequence != *previous + 1 {
            let seen: Vec<(i32, i64, String)> = records
                .iter()
                .filter(|r| key(r) == key(record))
                .map(|r| (r.partition(), r.offset(), header(r, "ce_sequence").unwrap()))
                .collect();
            panic!(
                "aggregate {} skipped from {} to {sequence}; its records as (partition, offset, sequence) in order of receipt: {seen:?}",
                key(record),
                *previous
            );
        }
        *previous = (*previous).max(sequence);
    }
    ids
}

#[tokio::test]
async fn concurrent_writers_and_a_transaction_held_open_lose_nothing_and_repeat_nothing() {
    // Arrange: a transaction takes its id and position first and commits last.
    let app = TestApp::spawn().await;
    let consumer = app.consumer();
    let held_id = uuid::Uuid::new_v4();
    let mut held = app.pool.begin().await.unwrap();
    let payload = json!({ "PatientRegistered": {
        "patient_id": held_id, "mrn": "0000000018",
        "name": { "given": ["Held"], "family": "Open" },
        "birth_date": "1980-01-01", "gender": "unknown",
        "registered_at": "2026-11-27T12:00:00Z"
    }});
    // Written as the service writes it (sealed, chained), so the relay publishes it.
    let secrets = app.settings.secrets().unwrap();
    let aggregate_id = held_id.to_string();
    let event_store::keys::KeyState::Active(data_key) = secrets
        .keys
        .data_key_for_writing(&mut held, &aggregate_id, true)
        .await
        .unwrap()
    else {
        panic!("a new patient's data key")
    };
    let event_id = schemas::envelope::event_id("Patient", &aggregate_id, 1);
    let sealed = json!({ "sealed": schemas::sealed::seal(
        &data_key,
        event_id.as_bytes(),
        &serde_json::to_vec(&payload).unwrap(),
    ) });
    let metadata = json!({ "user_id": "held-open" });
    let hash = secrets.chain.event_hash(
        &[],
        event_store::chain::EventFields {
            aggregate_type: "Patient",
            aggregate_id: &aggregate_id,
            sequence: 1,
            event_type: "PatientRegistered",
            event_version: "1.0",
            payload: &sealed,
            metadata: &metadata,
        },
    );
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, hash)
         VALUES ('Patient', $1, 1, 'PatientRegistered', '1.0', $2, $3, $4)",
    )
    .bind(&aggregate_id)
    .bind(&sealed)
    .bind(&metadata)
    .bind(&hash)
    .execute(&mut *held)
    .await
    .unwrap();

    // Act: many writers commit while it is open, then it commits.
    let writers = (0..8).map(|w| {
        let app = &app;
        async move {
            for i in 0..5 {
                let body = app.register_person(w * 5 + i, Some("Writer")).await;
                let id = body["id"].as_str().unwrap();
                let response = app
                    .command(
                        id,
                        "correct-demographics",
                        1,
                        &json!({ "gender": "other", "reason": "r" }),
                    )
                    .await;
                assert_eq!(response.status(), 200);
            }
        }
    });
    futures::future::join_all(writers).await;
    held.commit().await.unwrap();
    let total = app.event_count().await as usize;
    assert_eq!(total, 8 * 5 * 2 + 1);

    // Assert: every event once, in order per aggregate, the held one included.
    let records = consume(&consumer, total).await;
    let ids = assert_in_order_per_aggregate(&records);
    assert_eq!(ids.len(), total, "every event published");
    assert!(records.iter().any(|r| key(r) == held_id.to_string()));
    assert_eq!(
        records_on_topic(&app),
        total as i64,
        "no event published twice"
    );
    app.search_until("family=open", 1).await;
    app.search_until("family=writer&limit=100", 40).await;
    app.stop().await;
}

/// A broker of our own, on its own storage, that a test can stop and start.
struct Broker {
    port: u16,
    storage: String,
    child: Option<Child>,
}

impl Broker {
    async fn start() -> Self {
        let (_, storage) = create_database().await;
        // The broker's own PostgreSQL client does not know the test CA: no TLS for it.
        let storage = format!("{storage}?sslmode=disable");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = Self {
            port,
            storage,
            child: None,
        };
        broker.resume();
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let nisshi = std::env::var("NISSHI_BIN")
            .expect("NISSHI_BIN is not set: run the tests with scripts/test");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(nisshi)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .args([
                "--group-initial-rebalance-delay",
                "0s",
                "--storage-engine",
                &self.storage,
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn registrations_succeed_while_the_broker_is_down_and_are_published_when_it_returns() {
    // Arrange
    let mut broker = Broker::start().await;
    let app = TestApp::spawn_with(AppOptions {
        brokers: Some(broker.address()),
        message_timeout_ms: 3000,
        ..AppOptions::default()
    })
    .await;
    let consumer = consumer_for(&broker.address(), &app.topic());
    for i in 0..3 {
        app.register_person(i, Some("Outage")).await;
    }
    let before = consume(&consumer, 3).await;

    // Act: the broker goes away; registrations go on.
    broker.kill();
    for i in 3..8 {
        app.register_person(i, Some("Outage")).await;
    }
    broker.resume();

    // Assert: the backlog is published and the read model (fed from Kafka) converges.
    let mut records = before;
    records.extend(
        consume_until(&consumer, |after| {
            after
                .iter()
                .filter_map(|r| header(r, "ce_id"))
                .collect::<HashSet<_>>()
                .len()
                >= 5
        })
        .await,
    );
    assert_eq!(
        assert_in_order_per_aggregate(&records).len(),
        8,
        "every registration published"
    );
    app.search_until("family=outage", 8).await;
    app.stop().await;
}

#[tokio::test]
async fn a_relay_killed_mid_stream_and_restarted_loses_nothing_and_repeats_are_absorbed() {
    // Arrange: events written with no relay running; projectors consume Kafka. A broker of its
    // own, on durable storage: killing a producer mid-request is hard on a broker, and this
    // test is about our relay, not about the shared broker's in-memory storage.
    let broker = Broker::start().await;
    let app = TestApp::spawn_with(AppOptions {
        roles: Roles {
            api: true,
            relay: false,
            projectors: true,
            background: true,
        },
        brokers: Some(broker.address()),
        ..AppOptions::default()
    })
    .await;
    let consumer = app.consumer();
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = app.register_person(i, Some(&format!("A{i:02}"))).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (version, family) in [(1, "B"), (2, "C")] {
            let body = json!({ "name": { "given": ["Relay"], "family": format!("{family}{i:02}") }, "reason": "r" });
            assert_eq!(
                app.command(&id, "correct-demographics", version, &body)
                    .await
                    .status(),
                200
            );
        }
        ids.push(id);
    }
    let total = app.event_count().await as usize;

    // Act: a relay process publishes in small batches and is killed once some arrived.
    let relay = |app: &TestApp| {
        Running(
            service_command("relay")
                .env("DATABASE_URL", &app.database_url)
                .envs(SECURITY_ENV)
                .env("KAFKA_BROKERS", broker.address())
                .env("APP_KAFKA__TOPIC_PREFIX", &app.settings.kafka.topic_prefix)
                .env("APP_KAFKA__RELAY_BATCH_SIZE", "5")
                .spawn()
                .unwrap(),
        )
    };
    let mut first = relay(&app);
    let before_kill = consume(&consumer, 10).await;
    first.kill().unwrap();
    first.wait().unwrap();
    // As if the crash came after the broker acknowledged but before the checkpoint was saved:
    // move the checkpoint back before events known to be published, so they go out again.
    sqlx::query(
        "UPDATE relay_checkpoints SET (transaction_id, position) =
            (SELECT transaction_id, position FROM events ORDER BY transaction_id, position OFFSET 4 LIMIT 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut second = relay(&app);

    // Assert: all published, some twice; the read model shows the last state of everyone.
    let seen_before: HashSet<String> = before_kill
        .iter()
        .filter_map(|r| header(r, "ce_id"))
        .collect();
    let mut records = before_kill;
    records.extend(
        consume_until(&consumer, |more| {
            let mut seen = seen_before.clone();
            seen.extend(more.iter().filter_map(|r| header(r, "ce_id")));
            seen.len() >= total && more.len() + seen_before.len() > total
        })
        .await,
    );
    second.kill().unwrap();
    second.wait().unwrap();
    let distinct = assert_in_order_per_aggregate(&records);
    assert_eq!(distinct.len(), total, "nothing lost");
    assert!(
        records.len() > total,
        "the rewound checkpoint re-sent events"
    );
    let found = app.search_until("family=c&limit=100", 30).await;
    assert!(
        found.iter().all(|p| p["version"] == 3),
        "duplicates were absorbed"
    );
    assert_eq!(app.search_until("family=b", 0).await.len(), 0);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projections.parked_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_stream_orders_by_transaction_id_as_a_number_across_a_digit_boundary() {
    // Arrange: rows of transactions 99, 100 and 101 (long ended), inserted out of order. As
    // text, "100" and "101" would sort before "99".
    let app = TestApp::without_kafka().await;
    for (xid, id) in [(101, "c"), (99, "a"), (100, "b")] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, transaction_id)
             VALUES ('Probe', $1, 1, 'Probed', '1.0', '{}', '{}', $2::text::xid8)",
        )
        .bind(id)
        .bind(xid.to_string())
        .execute(&app.pool)
        .await
        .unwrap();
    }

    // Act
    let read =
        event_store::stream::read_after(&app.pool, event_store::stream::Cursor::default(), 10)
            .await
            .unwrap();
    let after_first = event_store::stream::read_after(&app.pool, read[0].cursor(), 10)
        .await
        .unwrap();

    // Assert
    let ids: Vec<&str> = read.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let rest: Vec<&str> = after_first
        .iter()
        .map(|e| e.aggregate_id.as_str())
        .collect();
    assert_eq!(rest, ["b", "c"]);
    app.stop().await;
}

/// The newest event is the one with the greatest transaction id as a number, not as text: a
/// rebuild reads up to it, and stopped at the first ten-thousandth transaction when '9999'
/// sorted after '10000'.
#[tokio::test]
async fn the_newest_event_is_found_by_transaction_number_not_by_its_text() {
    let app = TestApp::without_kafka().await;
    // Transaction ids far beyond any this cluster has used: the text order puts the smaller
    // one last.
    for (xid, id) in [("99999999990", "newest-a"), ("100000000000", "newest-b")] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, transaction_id)
             VALUES ('Probe', $1, 1, 'Probe', '1.0', '{}', '{}', $2::text::xid8)",
        )
        .bind(id)
        .bind(xid)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    let newest = event_store::stream::newest(&app.pool)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(newest.transaction_id, 100_000_000_000);
    app.stop().await;
}

/// A read model whose store is down: every batch fails, as one would while, say, document
/// storage cannot be reached. Its lock and place are the match model's.
struct Broken(projections::Projector<projections::patient_match::PatientMatch>);

impl command_api::stream_feed::Fed for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn tables(&self) -> &'static [&'static str] {
        projections::ReadModel::tables(self.0.model())
    }
    fn indexes_for_writes(&self) -> &'static [&'static str] {
        projections::ReadModel::indexes_for_writes(self.0.model())
    }
    fn wants(&self, _aggregate_type: &str) -> bool {
        true
    }
    fn lock(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<projections::StreamLock>, sqlx::Error>> {
        Box::pin(self.0.try_lock_stream())
    }
    fn position(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<projections::StreamPosition, sqlx::Error>> {
        Box::pin(self.0.stream_position())
    }
    fn reset(&self) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
    fn apply_batch<'a>(
        &'a self,
        _batch: &'a [(
            Option<&'a schemas::PublishedEvent>,
            projections::StreamPosition,
        )],
        _keys: &'a HashMap<String, schemas::sealed::DataKey>,
    ) -> futures::future::BoxFuture<'a, Result<bool, projections::ProjectionError>> {
        Box::pin(async {
            Err(projections::ProjectionError::Documents(
                "storage down".into(),
            ))
        })
    }
    fn apply_one<'a>(
        &'a self,
        _event: &'a schemas::PublishedEvent,
        _at: projections::StreamPosition,
    ) -> futures::future::BoxFuture<'a, Result<projections::Applied, projections::ProjectionError>>
    {
        Box::pin(async {
            Err(projections::ProjectionError::Documents(
                "storage down".into(),
            ))
        })
    }
    fn park<'a>(
        &'a self,
        _event_type: &'a str,
        _at: projections::StreamPosition,
        _error: &'a projections::ProjectionError,
    ) -> futures::future::BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
    fn skip(
        &self,
        _at: projections::StreamPosition,
    ) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_read_model_that_keeps_failing_does_not_hold_back_the_others() {
    // Arrange: patients registered with no projector running; a feed of search beside a read
    // model whose store is down.
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        roles: Roles {
            api: true,
            relay: false,
            projectors: false,
            background: true,
        },
        ..AppOptions::default()
    })
    .await;
    for n in 0..3 {
        app.register_person(n, Some("Isolated")).await;
    }
    let secrets = app.settings.secrets().unwrap();
    let search = projections::Projector::new(
        app.pool.clone(),
        secrets.keys.clone(),
        projections::patient_search::PatientSearch,
    );
    let broken = || {
        Broken(projections::Projector::new(
            app.pool.clone(),
            secrets.keys.clone(),
            projections::patient_match::PatientMatch,
        ))
    };
    let parts = (
        app.pool.clone(),
        secrets.keys.clone(),
        secrets.chain.clone(),
    );
    let mut strict = command_api::stream_feed::Feed::lock(
        parts.clone(),
        vec![Box::new(broken()), Box::new(&search)],
    )
    .await
    .unwrap()
    .unwrap();

    // Act and assert: `rebuild` and the tools stop at the first failure. (A round reads
    // nothing while a transaction elsewhere in the cluster holds the stream back: it is read
    // again until the events come.)
    let deadline = Instant::now() + DEADLINE;
    let failed = loop {
        match strict.feed_available().await {
            Ok(0) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => break other,
        }
    };
    assert!(failed.is_err(), "{failed:?}");
    strict.release().await.unwrap();

    // Act: `serve` waits the failing model out apart.
    let mut serving =
        command_api::stream_feed::Feed::lock(parts, vec![Box::new(broken()), Box::new(&search)])
            .await
            .unwrap()
            .unwrap()
            .isolating_failures();
    let deadline = Instant::now() + DEADLINE;
    let mut found = 0;
    while found < 3 && Instant::now() < deadline {
        let read = serving.feed_available().await;
        // Assert: no round fails for the broken model's sake.
        assert!(read.is_ok(), "{read:?}");
        found = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM projections.patient_search WHERE family = 'Isolated'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Assert: search took in every registration; the broken model waits to be tried again.
    assert_eq!(found, 3);
    assert!(serving.next_retry().is_some());
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_that_fails_leaves_the_live_read_models_as_they_were() {
    // Arrange: patients projected into search, with no projector of the service running.
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        roles: Roles {
            api: true,
            relay: false,
            projectors: false,
            background: true,
        },
        ..AppOptions::default()
    })
    .await;
    for n in 0..3 {
        app.register_person(n, Some("Kept")).await;
    }
    let secrets = app.settings.secrets().unwrap();
    let search = || {
        projections::Projector::new(
            app.pool.clone(),
            secrets.keys.clone(),
            projections::patient_search::PatientSearch,
        )
    };
    command_api::stream_feed::project_all(&search(), &secrets.chain)
        .await
        .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM projections.patient_search WHERE family = 'Kept'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(count().await, 3);
    let checkpoints = || async {
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT projector, transaction_id, position FROM projections.stream_checkpoints
              ORDER BY projector",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    let before = checkpoints().await;
    let fresh = search().writing(projections::Tables::Rebuild);
    let broken = Broken(
        projections::Projector::new(
            app.pool.clone(),
            secrets.keys.clone(),
            projections::patient_match::PatientMatch,
        )
        .writing(projections::Tables::Rebuild),
    );
    let parts = (
        app.pool.clone(),
        secrets.keys.clone(),
        secrets.chain.clone(),
    );

    // Act: a rebuild of search beside a model whose store is down.
    let rebuilt =
        command_api::read_models::rebuild(parts, vec![Box::new(fresh), Box::new(broken)]).await;

    // Assert: refused; search still serves what it held, from where it stood, and the fresh
    // tables are gone.
    assert!(rebuilt.is_err(), "{rebuilt:?}");
    assert_eq!(count().await, 3);
    assert_eq!(checkpoints().await, before);
    let leftover: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'projections_rebuild')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!leftover);
    app.stop().await;
}

#[tokio::test]
async fn the_indexes_read_models_name_for_their_writes_exist() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let secrets = app.settings.secrets().unwrap();
    let storage = app.settings.documents.storage().unwrap();
    let read_models =
        command_api::read_models::ReadModels::new(app.pool.clone(), &secrets, storage);

    // Act
    let named: Vec<(&str, &str)> = read_models
        .fed()
        .await
        .unwrap()
        .iter()
        .flat_map(|m| {
            m.indexes_for_writes()
                .iter()
                .map(|index| (m.name(), *index))
        })
        .collect();

    // Assert: a rebuild builds each before loading (a name that matches nothing would leave
    // the writes scanning the fresh tables).
    assert!(!named.is_empty());
    for (model, index) in named {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_indexes
              WHERE schemaname = 'projections' AND indexname = $1",
        )
        .bind(index)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        let table = table.unwrap_or_else(|| panic!("{model} names {index}, which is no index"));
        let models = read_models.fed().await.unwrap();
        let own = models.iter().find(|m| m.name() == model).unwrap();
        assert!(
            own.tables().contains(&table.as_str()),
            "{index} is on {table}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_is_refused_while_kafka_projectors_consume() {
    // Arrange: the service with its Kafka-fed projectors.
    let app = TestApp::spawn().await;
    let secrets = app.settings.secrets().unwrap();
    let storage = app.settings.documents.storage().unwrap();
    let read_models =
        command_api::read_models::ReadModels::new(app.pool.clone(), &secrets, storage);
    let search = projections::Projector::new(
        app.pool.clone(),
        secrets.keys.clone(),
        projections::patient_search::PatientSearch,
    );
    eventually("the search consumers hold their lock", || async {
        match search.try_lock_stream().await.unwrap() {
            Some(lock) => {
                lock.release().await.unwrap();
                false
            }
            None => true,
        }
    })
    .await;

    // Act: a rebuild would swap out tables the consumers write, with their offsets committed.
    let rebuilt = read_models.rebuild_all().await;

    // Assert
    let error = rebuilt.unwrap_err().to_string();
    assert!(error.contains("stop serve/project first"), "{error}");
    app.stop().await;
}
