//! Scheduling over HTTP: templates and blocks shape availability; appointments through their
//! statuses (and refusals of the moves not allowed); no double booking, also under 100
//! concurrent requests to two API processes; cancellations; the appointment topic.

use std::sync::Arc;

use command_api::startup::Roles;
use serde_json::{json, Value};

use crate::helpers::{
    assert_matches_schema_in, consume_until, consumer_for, error_fields, eventually, id_of,
    published, AppOptions, Running, TestApp,
};

/// Monday after the tests' fixed now (Friday 2026-11-27 12:00 UTC); Zurich is UTC+1.
const MONDAY: &str = "2026-11-30";

pub(crate) fn at(local: &str) -> String {
    // Local Zurich time on Monday as UTC.
    let (h, m) = local.split_once(':').unwrap();
    let h: u32 = h.parse::<u32>().unwrap() - 1;
    format!("{MONDAY}T{h:02}:{m}:00Z")
}

fn practitioner_template() -> Value {
    let days = ["mon", "tue", "wed", "thu", "fri"];
    json!({
        "time_zone": "Europe/Zurich",
        "slot_minutes": 30,
        "hours": days.iter().map(|d| json!({ "weekday": d, "start": "08:00", "end": "12:00" })).collect::<Vec<_>>(),
        "breaks": [{ "weekday": "mon", "start": "10:00", "end": "10:30" }],
        "reserved": [{ "weekday": "mon", "start": "11:00", "end": "12:00" }]
    })
}

async fn put(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .put(format!("{}{path}", app.address))
        .bearer_auth(app.token("admin-1", &["admin"]))
        .json(body)
        .send()
        .await
        .unwrap();
    let response = app.described("PUT", path, response).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Two cardiologists, one examination room, and a 30-minute consultation needing both.
pub(crate) async fn clinic(app: &TestApp) {
    for id in ["dr-heart", "dr-valve"] {
        let (status, body) = put(
            app,
            &format!("/v1/resources/{id}"),
            &json!({ "kind": "practitioner", "name": id, "specialty": "cardiology", "template": practitioner_template() }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = put(
        app,
        "/v1/resources/exam-1",
        &json!({ "kind": "room", "name": "Exam 1", "room_type": "exam" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = put(
        app,
        "/v1/services/cardiology-consult",
        &json!({ "name": "Cardiology consultation", "minutes": 30, "specialty": "cardiology", "room_type": "exam" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

fn scheduler(app: &TestApp) -> String {
    app.token("scheduler-1", &["scheduler"])
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path, &scheduler(app)).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn book(app: &TestApp, patient: &str, start: &str, extra: Value) -> (u16, Value) {
    let mut body =
        json!({ "patient_id": patient, "service": "cardiology-consult", "start": start });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    let response = app
        .post("/v1/appointments", &scheduler(app), &body, &[])
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn act(app: &TestApp, id: &str, action: &str, version: u64, body: Value) -> (u16, Value) {
    let etag = format!("\"{version}\"");
    let response = app
        .post(
            &format!("/v1/appointments/{id}/{action}"),
            &scheduler(app),
            &body,
            &[("if-match", &etag)],
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn local_starts(slots: &Value, practitioner: &str) -> Vec<String> {
    slots["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["practitioner"] == practitioner)
        .map(|s| {
            let t = chrono::DateTime::parse_from_rfc3339(s["start"].as_str().unwrap()).unwrap();
            (t + chrono::Duration::hours(1)).format("%H:%M").to_string()
        })
        .collect()
}

#[tokio::test]
async fn templates_blocks_and_priority_shape_availability() {
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let day = format!("from={MONDAY}T00:00:00Z&to={MONDAY}T23:00:00Z");

    let (status, routine) = get(
        &app,
        &format!("/v1/availability?service=cardiology-consult&{day}"),
    )
    .await;

    assert_eq!(status, 200, "{routine}");
    // 08:00-12:00 local, 30-minute slots, break 10:00-10:30, 11:00-12:00 kept for urgent.
    let expected = ["08:00", "08:30", "09:00", "09:30", "10:30"];
    assert_eq!(local_starts(&routine, "dr-heart"), expected);
    assert_eq!(local_starts(&routine, "dr-valve"), expected);
    assert!(routine["slots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["room"] == "exam-1"));
    let (_, urgent) = get(
        &app,
        &format!("/v1/availability?service=cardiology-consult&priority=urgent&{day}"),
    )
    .await;
    assert_eq!(
        local_starts(&urgent, "dr-heart"),
        ["08:00", "08:30", "09:00", "09:30", "10:30", "11:00", "11:30"]
    );

    // Leave blocks dr-valve's morning until 10:00.
    let block = app
        .post(
            "/v1/resources/dr-valve/blocks",
            &scheduler(&app),
            &json!({ "from": at("08:00"), "to": at("10:00"), "reason": "leave" }),
            &[],
        )
        .await;
    assert_eq!(block.status(), 201);
    let (_, blocked) = get(
        &app,
        &format!("/v1/availability?service=cardiology-consult&practitioner=dr-valve&{day}"),
    )
    .await;
    assert_eq!(local_starts(&blocked, "dr-valve"), ["10:30"]);
    assert!(
        local_starts(&blocked, "dr-heart").is_empty(),
        "asked for dr-valve only"
    );

    // A 60-minute request needs two free slots in a row.
    let (_, long) = get(
        &app,
        &format!(
            "/v1/availability?service=cardiology-consult&practitioner=dr-heart&duration=60&{day}"
        ),
    )
    .await;
    assert_eq!(local_starts(&long, "dr-heart"), ["08:00", "08:30", "09:00"]);

    // Bad templates and parameters are refused, naming the fields.
    let (status, problem) = put(
        &app,
        "/v1/resources/dr-bad",
        &json!({ "kind": "practitioner", "name": "Bad", "template": { "time_zone": "Mars/Base", "slot_minutes": 30,
                  "hours": [{ "weekday": "mon", "start": "12:00", "end": "08:00" }] } }),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        error_fields(&problem),
        ["template.time_zone", "template.hours[0].end"]
    );
    let (status, problem) = get(
        &app,
        "/v1/availability?service=cardiology-consult&from=monday",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error_fields(&problem), ["to", "from"]);
    let (status, _) = get(&app, &format!("/v1/availability?service=nothing&{day}")).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn appointments_move_through_their_statuses_and_the_others_are_refused() {
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        configure: Some(Arc::new(|s| s.scheduling.late_cancellation_hours = 100)),
        ..AppOptions::default()
    })
    .await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(1, None).await);
    let bob = id_of(&app.register_person(2, None).await);

    // Booked, then arrived, checked in, fulfilled; nothing skips a step.
    let (status, visit) = book(
        &app,
        &ada,
        &at("08:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{visit}");
    assert_eq!(visit["status"], "booked");
    assert_eq!(visit["booking"]["resources"], json!(["dr-heart", "exam-1"]));
    let id = visit["appointment_id"].as_str().unwrap().to_owned();
    let (status, refused) = act(&app, &id, "check-in", 1, json!({})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("transition-not-allowed"))
    );
    let (status, refused) = act(&app, &id, "no-show", 1, json!({})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("no-show-before-start"))
    );
    for (version, step, expected) in [
        (1, "arrive", "arrived"),
        (2, "check-in", "checked-in"),
        (3, "fulfil", "fulfilled"),
    ] {
        let (status, moved) = act(&app, &id, step, version, json!({})).await;
        assert_eq!(status, 200, "{step}: {moved}");
        assert_eq!(moved["status"], expected);
    }
    let (status, _) = act(&app, &id, "arrive", 3, json!({})).await;
    assert_eq!(status, 412, "stale version first");
    let (status, refused) = act(&app, &id, "arrive", 4, json!({})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("transition-not-allowed"))
    );

    // The same practitioner at the same time: refused, with who holds it and alternatives.
    let (status, taken) = book(
        &app,
        &bob,
        &at("08:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 409, "{taken}");
    assert_eq!(taken["code"], "time-taken");
    assert_eq!(taken["conflicting_appointment"], id.as_str());
    assert!(!taken["alternatives"].as_array().unwrap().is_empty());
    // The same patient twice at once: refused too, whoever the practitioner.
    let (status, _) = book(&app, &ada, &at("08:00"), json!({})).await;
    assert_eq!(status, 409);

    // Any cardiologist: the free one is chosen.
    let (status, any) = book(&app, &bob, &at("08:30"), json!({})).await;
    assert_eq!(status, 201, "{any}");

    // A hold is confirmed; a cancellation is flagged late by the policy and frees the time.
    let (status, held) = book(
        &app,
        &bob,
        &at("09:00"),
        json!({ "practitioner": "dr-valve", "hold": true }),
    )
    .await;
    assert_eq!((status, held["status"].as_str()), (201, Some("pending")));
    let held_id = held["appointment_id"].as_str().unwrap().to_owned();
    let (status, confirmed) = act(&app, &held_id, "confirm", 1, json!({})).await;
    assert_eq!(
        (status, confirmed["status"].as_str()),
        (200, Some("booked")),
        "{confirmed}"
    );
    let (status, cancelled) = act(
        &app,
        &held_id,
        "cancel",
        2,
        json!({ "reason": "patient-sick" }),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["cancellation"]["late"], true);
    assert_eq!(cancelled["cancellation"]["by"], "scheduler-1");
    let (status, again) = book(
        &app,
        &ada,
        &at("09:00"),
        json!({ "practitioner": "dr-valve" }),
    )
    .await;
    assert_eq!(status, 201, "the cancelled time is free again: {again}");
    let (status, bad) = act(&app, &held_id, "cancel", 3, json!({ "reason": "bored" })).await;
    assert_eq!(
        (status, error_fields(&bad)),
        (422, vec!["reason".to_owned()])
    );

    // A reschedule moves the time and frees the old one.
    let moved_id = any["appointment_id"].as_str().unwrap();
    let (status, moved) = act(
        &app,
        moved_id,
        "reschedule",
        1,
        json!({ "start": at("10:30"), "reason": "patient asked" }),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["booking"]["interval"]["start"], at("10:30"));
    let (status, _) = book(&app, &ada, &at("08:30"), json!({})).await;
    assert_eq!(status, 201);
    let (status, marked) = act(
        &app,
        moved_id,
        "entered-in-error",
        2,
        json!({ "reason": "wrong patient" }),
    )
    .await;
    assert_eq!(
        (status, marked["status"].as_str()),
        (200, Some("entered-in-error"))
    );

    // Reads are recorded accesses of the patient.
    let (status, read) = get(&app, &format!("/v1/appointments/{id}")).await;
    assert_eq!((status, read["status"].as_str()), (200, Some("fulfilled")));
    let (status, _) = get(&app, &format!("/v1/appointments/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_bookings_of_one_slot_at_two_api_processes_book_it_once() {
    // Arrange: two API processes on one database.
    let first = TestApp::without_kafka().await;
    let mut settings = first.settings.clone();
    settings.http.port = 0;
    let second = TestApp::start(
        settings,
        Roles {
            api: true,
            relay: false,
            projectors: false,
            background: false,
        },
    )
    .await;
    clinic(&first).await;
    let mut patients = Vec::new();
    for n in 0..100 {
        patients.push(
            first.register_person(100 + n, None).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Act
    let mut requests = tokio::task::JoinSet::new();
    for (i, patient) in patients.into_iter().enumerate() {
        let app = if i % 2 == 0 {
            first.address.clone()
        } else {
            second.address.clone()
        };
        let client = first.client.clone();
        let token = scheduler(&first);
        let start = at("08:00");
        requests.spawn(async move {
            let response = client
                .post(format!("{app}/v1/appointments"))
                .bearer_auth(token)
                .json(&json!({ "patient_id": patient, "service": "cardiology-consult", "start": start, "practitioner": "dr-heart" }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        });
    }
    let mut booked = Vec::new();
    let mut refused = Vec::new();
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            201 => booked.push(body),
            409 => refused.push(body),
            other => panic!("{other}: {body}"),
        }
    }

    // Assert
    assert_eq!(booked.len(), 1, "exactly one booking");
    assert_eq!(refused.len(), 99);
    let winner = booked[0]["appointment_id"].as_str().unwrap();
    for problem in &refused {
        assert_eq!(problem["code"], "time-taken");
        assert_eq!(problem["conflicting_appointment"], winner, "{problem}");
        assert!(!problem["alternatives"].as_array().unwrap().is_empty());
    }
    let claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM schedule_claims WHERE resource = 'resource:dr-heart'",
    )
    .fetch_one(&first.pool)
    .await
    .unwrap();
    assert_eq!(claims, 1);
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn appointment_events_are_published_sealed_with_the_patients_key_and_match_their_schemas() {
    let app = TestApp::spawn().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(3, None).await);
    let (status, visit) = book(&app, &ada, &at("08:00"), json!({ "hold": true })).await;
    assert_eq!(status, 201, "{visit}");
    let id = visit["appointment_id"].as_str().unwrap().to_owned();
    for (version, action, body) in [
        (
            1,
            "reschedule",
            json!({ "start": at("09:00"), "reason": "later" }),
        ),
        (2, "confirm", json!({})),
        (3, "cancel", json!({ "reason": "patient" })),
    ] {
        let (status, body) = act(&app, &id, action, version, body).await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::APPOINTMENT
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let records = consume_until(&consumer, |r| r.len() >= 4).await;
    let mut types = Vec::new();
    for record in &records {
        let event = published(record);
        assert_eq!(crate::helpers::key(record), ada, "keyed by patient");
        assert_eq!(event.subject, id);
        assert_eq!(
            event.key_id().as_deref(),
            Some(ada.as_str()),
            "sealed with the patient's key"
        );
        let data = app.open(record).await;
        assert_matches_schema_in("appointment/v1", &event.event_type, &data);
        types.push(event.event_type);
    }
    assert_eq!(
        types,
        [
            "AppointmentCreated",
            "AppointmentRescheduled",
            "AppointmentStatusChanged",
            "AppointmentCancelled"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn reminders_go_out_once_at_their_time_move_with_the_appointment_and_survive_a_restart() {
    use std::sync::atomic::{AtomicI64, Ordering};
    // Arrange: a clock the test moves; sessions that outlive the jumps.
    let offset = Arc::new(AtomicI64::new(0));
    let moved = offset.clone();
    let clock: command_api::http::Clock = Arc::new(move || {
        crate::helpers::fixed_now() + chrono::Duration::seconds(moved.load(Ordering::SeqCst))
    });
    let app = TestApp::spawn_with(AppOptions {
        clock: Some(clock.clone()),
        configure: Some(Arc::new(|s| {
            s.scheduling.reminder_offsets_minutes = vec![1440, 60];
            s.auth.idle_timeout_secs = 10_000_000;
        })),
        ..AppOptions::default()
    })
    .await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(4, None).await);
    let opt_in = app
        .client
        .put(format!("{}/v1/patients/{ada}/preferences", app.address))
        .bearer_auth(app.registrar())
        .header("if-match", "\"1\"")
        .json(&json!({ "reminder_opt_in": true, "preferred_channel": "sms" }))
        .send()
        .await
        .unwrap();
    assert_eq!(opt_in.status(), 200, "{:?}", opt_in.text().await);
    let (status, visit) = book(
        &app,
        &ada,
        &at("09:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{visit}");
    let id = visit["appointment_id"].as_str().unwrap().to_owned();
    let topic = format!(
        "{}{}",
        app.settings.kafka.topic_prefix,
        schemas::topics::NOTIFICATIONS
    );
    let consumer = consumer_for(app.settings.kafka.brokers.as_deref().unwrap(), &topic);
    let set = |at: &str| {
        let target = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&chrono::Utc);
        offset.store(
            (target - crate::helpers::fixed_now()).num_seconds(),
            Ordering::SeqCst,
        );
    };

    // Act: the day-before reminder falls due.
    set("2026-11-29T08:01:00Z");
    let first = consume_until(&consumer, |r| !r.is_empty()).await;
    // The appointment moves; the service restarts; the new reminders fall due.
    let (status, moved_visit) = act(
        &app,
        &id,
        "reschedule",
        1,
        json!({ "start": at("10:30"), "reason": "patient asked" }),
    )
    .await;
    assert_eq!(status, 200, "{moved_visit}");
    let settings = app.settings.clone();
    app.stop().await;
    let app = TestApp::start_with_clock(settings, Roles::ALL, clock.clone()).await;
    set("2026-11-30T09:05:00Z");
    let mut records = first;
    records.extend(consume_until(&consumer, |r| r.len() >= 2).await);

    // Assert: three reminders: the old day-before one, then both for the new time.
    let mut seen = std::collections::BTreeMap::new();
    for record in &records {
        let event = published(record);
        assert_eq!(event.event_type, "AppointmentReminder");
        assert_eq!(crate::helpers::key(record), ada);
        let data = app.open(record).await;
        assert_matches_schema_in("notification/v1", &event.event_type, &data);
        let data: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(data["channel"], "sms");
        seen.insert(
            event.id,
            (
                data["starts_at"].as_str().unwrap().to_owned(),
                data["offset_minutes"].as_u64().unwrap(),
            ),
        );
    }
    let expected: Vec<(String, u64)> = vec![
        ("2026-11-30T08:00:00Z".into(), 1440),
        ("2026-11-30T09:30:00Z".into(), 60),
        ("2026-11-30T09:30:00Z".into(), 1440),
    ];
    let mut got: Vec<(String, u64)> = seen.into_values().collect();
    got.sort();
    assert_eq!(
        got, expected,
        "each once; the old 60-minute reminder was dropped"
    );
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Notification'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(sent, 3, "stored once each");

    // A cancelled appointment's reminders are dropped.
    let (status, other) = book(
        &app,
        &ada,
        "2026-12-02T08:00:00Z",
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    let other_id = other["appointment_id"].as_str().unwrap();
    let pending = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM scheduling_reminders WHERE appointment_id = $1::uuid AND status = 'pending'")
            .bind(other_id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(pending().await, 2);
    let (status, _) = act(&app, other_id, "cancel", 1, json!({ "reason": "patient" })).await;
    assert_eq!(status, 200);
    assert_eq!(pending().await, 0);
    app.stop().await;
}

/// Polls appointment `id` until its status is `status`.
async fn until_status(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    loop {
        let (code, body) = get(app, &format!("/v1/appointments/{id}")).await;
        if code == 200 && body["status"] == status {
            return body;
        }
        if std::time::Instant::now() >= deadline {
            // What the wait list and the process managers made of it, to tell why.
            let waitlist: Vec<(String, i16)> = sqlx::query_as(
                "SELECT status, priority_rank FROM scheduling_waitlist
                  WHERE appointment_id = $1::uuid",
            )
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
            let refusals: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, reason FROM process_manager_refusals ORDER BY refused_at",
            )
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
            panic!(
                "{id} never became {status}: {body}; wait list {waitlist:?}; refusals {refusals:?}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_freed_slot_is_offered_to_the_best_wait_list_entry_and_an_expired_offer_passes_on() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let offset = Arc::new(AtomicI64::new(0));
    let moved = offset.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(Arc::new(move || {
            crate::helpers::fixed_now() + chrono::Duration::seconds(moved.load(Ordering::SeqCst))
        })),
        configure: Some(Arc::new(|s| s.auth.idle_timeout_secs = 10_000_000)),
        ..AppOptions::default()
    })
    .await;
    clinic(&app).await;
    // dr-heart's routine Monday is full.
    let mut booked = Vec::new();
    for (n, time) in ["08:00", "08:30", "09:00", "09:30", "10:30"]
        .iter()
        .enumerate()
    {
        let patient = id_of(&app.register_person(200 + n as u64, None).await);
        let (status, body) = book(
            &app,
            &patient,
            &at(time),
            json!({ "practitioner": "dr-heart" }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        booked.push(body["appointment_id"].as_str().unwrap().to_owned());
    }
    let routine = id_of(&app.register_person(210, None).await);
    let urgent = id_of(&app.register_person(211, None).await);
    let join = |patient: String, priority: &'static str| {
        let app = &app;
        async move {
            let response = app
                .post(
                    "/v1/waitlist",
                    &scheduler(app),
                    &json!({ "patient_id": patient, "service": "cardiology-consult", "practitioner": "dr-heart",
                             "from": at("08:00"), "to": at("11:00"), "priority": priority }),
                    &[],
                )
                .await;
            assert_eq!(response.status(), 201);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], "waitlist");
            body["appointment_id"].as_str().unwrap().to_owned()
        }
    };
    let first_in_line = join(routine, "routine").await;
    let urgent_entry = join(urgent, "urgent").await;

    // Act: the 09:00 appointment is cancelled.
    let (status, _) = act(
        &app,
        &booked[2],
        "cancel",
        1,
        json!({ "reason": "patient" }),
    )
    .await;
    assert_eq!(status, 200);

    // Assert: the urgent entry, though it joined later, is offered the freed slot.
    let offered = until_status(&app, &urgent_entry, "pending").await;
    assert_eq!(offered["booking"]["interval"]["start"], at("09:00"));
    let (_, waiting) = get(&app, &format!("/v1/appointments/{first_in_line}")).await;
    assert_eq!(waiting["status"], "waitlist");
    crate::helpers::eventually("the offer's notification", || async {
        let offers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Notification' AND event_type = 'WaitlistOffer'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        offers == 1
    })
    .await;

    // The offer expires unanswered: it passes to the next entry, who accepts.
    offset.store(11 * 60, Ordering::SeqCst);
    until_status(&app, &urgent_entry, "waitlist").await;
    let second = until_status(&app, &first_in_line, "pending").await;
    assert_eq!(second["booking"]["interval"]["start"], at("09:00"));
    let version = second["version"].as_u64().unwrap();
    let (status, accepted) = act(&app, &first_in_line, "confirm", version, json!({})).await;
    assert_eq!(
        (status, accepted["status"].as_str()),
        (200, Some("booked")),
        "{accepted}"
    );
    for (entry, expected) in [(&first_in_line, "booked"), (&urgent_entry, "waiting")] {
        let status: String = sqlx::query_scalar(
            "SELECT status FROM scheduling_waitlist WHERE appointment_id = $1::uuid",
        )
        .bind(entry)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(status, expected);
    }
    app.stop().await;
}

#[tokio::test]
async fn proposals_holds_no_shows_and_reserved_time_follow_the_chart_and_the_priorities() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let offset = Arc::new(AtomicI64::new(0));
    let moved = offset.clone();
    let app = TestApp::spawn_with(AppOptions {
        kafka: false,
        clock: Some(Arc::new(move || {
            crate::helpers::fixed_now() + chrono::Duration::seconds(moved.load(Ordering::SeqCst))
        })),
        configure: Some(Arc::new(|s| s.auth.idle_timeout_secs = 10_000_000)),
        ..AppOptions::default()
    })
    .await;
    clinic(&app).await;
    let set = |at: &str| {
        let target = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&chrono::Utc);
        offset.store(
            (target - crate::helpers::fixed_now()).num_seconds(),
            Ordering::SeqCst,
        );
    };
    let patient = |n: u64| {
        let app = &app;
        async move { id_of(&app.register_person(300 + n, None).await) }
    };
    let dr = json!({ "practitioner": "dr-heart" });

    // proposed -> booked (the time is claimed only then) and proposed -> cancelled.
    let (status, proposal) = book(
        &app,
        &patient(1).await,
        &at("08:00"),
        json!({ "practitioner": "dr-heart", "propose": true }),
    )
    .await;
    assert_eq!(
        (status, proposal["status"].as_str()),
        (201, Some("proposed")),
        "{proposal}"
    );
    let proposal_id = proposal["appointment_id"].as_str().unwrap().to_owned();
    let (status, refused) = act(&app, &proposal_id, "arrive", 1, json!({})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("transition-not-allowed"))
    );
    let (status, confirmed) = act(&app, &proposal_id, "confirm", 1, json!({})).await;
    assert_eq!(
        (status, confirmed["status"].as_str()),
        (200, Some("booked")),
        "{confirmed}"
    );
    let (status, _) = book(&app, &patient(2).await, &at("08:00"), dr.clone()).await;
    assert_eq!(status, 409, "the confirmed proposal holds its time");
    let (status, other) = book(
        &app,
        &patient(3).await,
        &at("08:30"),
        json!({ "practitioner": "dr-heart", "propose": true }),
    )
    .await;
    assert_eq!(status, 201);
    let (status, dropped) = act(
        &app,
        other["appointment_id"].as_str().unwrap(),
        "cancel",
        1,
        json!({ "reason": "patient" }),
    )
    .await;
    assert_eq!(
        (status, dropped["status"].as_str()),
        (200, Some("cancelled"))
    );
    assert_eq!(
        dropped["cancellation"]["late"], false,
        "a proposal is never cancelled late"
    );
    let (status, problem) = book(
        &app,
        &patient(4).await,
        &at("09:00"),
        json!({ "hold": true, "propose": true }),
    )
    .await;
    assert_eq!(
        (status, error_fields(&problem)),
        (422, vec!["propose".to_owned()])
    );

    // pending -> cancelled frees the hold.
    let (status, held) = book(
        &app,
        &patient(5).await,
        &at("09:00"),
        json!({ "practitioner": "dr-heart", "hold": true }),
    )
    .await;
    assert_eq!(status, 201);
    let (status, released) = act(
        &app,
        held["appointment_id"].as_str().unwrap(),
        "cancel",
        1,
        json!({ "reason": "patient" }),
    )
    .await;
    assert_eq!(
        (status, released["status"].as_str()),
        (200, Some("cancelled"))
    );
    let (status, _) = book(&app, &patient(6).await, &at("09:00"), dr.clone()).await;
    assert_eq!(status, 201, "the cancelled hold's time is free");

    // Reserved time: urgent may book it, routine may not until the release lead time.
    let (status, _) = book(
        &app,
        &patient(7).await,
        &at("11:00"),
        json!({ "practitioner": "dr-heart", "priority": "urgent" }),
    )
    .await;
    assert_eq!(status, 201);
    let late_comer = patient(8).await;
    let (status, _) = book(&app, &late_comer, &at("11:30"), dr.clone()).await;
    assert_eq!(status, 409, "reserved for urgent requests");
    set(&at("09:45"));
    let (status, routine) = book(&app, &late_comer, &at("11:30"), dr.clone()).await;
    assert_eq!(status, 201, "released within two hours: {routine}");

    // arrived -> cancelled: the patient left before being seen.
    let (status, walk_in) = book(&app, &patient(9).await, &at("10:30"), dr.clone()).await;
    assert_eq!(status, 201, "{walk_in}");
    let walk_in_id = walk_in["appointment_id"].as_str().unwrap().to_owned();
    let (status, _) = act(&app, &walk_in_id, "arrive", 1, json!({})).await;
    assert_eq!(status, 200);
    let (status, left) = act(
        &app,
        &walk_in_id,
        "cancel",
        2,
        json!({ "reason": "patient" }),
    )
    .await;
    assert_eq!(
        (status, left["status"].as_str()),
        (200, Some("cancelled")),
        "{left}"
    );

    // booked -> noshow once the start has passed; nothing follows a no-show.
    let booked_id = confirmed["appointment_id"].as_str().unwrap().to_owned();
    let version = confirmed["version"].as_u64().unwrap();
    let (status, missed) = act(&app, &booked_id, "no-show", version, json!({})).await;
    assert_eq!(
        (status, missed["status"].as_str()),
        (200, Some("noshow")),
        "{missed}"
    );
    let (status, refused) = act(&app, &booked_id, "arrive", version + 1, json!({})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("transition-not-allowed"))
    );
    app.stop().await;
}

#[tokio::test]
async fn archiving_a_patient_cancels_their_appointments_ahead_and_their_wait_list_places() {
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(400, None).await);
    let (status, visit) = book(
        &app,
        &ada,
        &at("08:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{visit}");
    let waiting = app
        .post(
            "/v1/waitlist",
            &scheduler(&app),
            &json!({ "patient_id": ada, "service": "cardiology-consult", "practitioner": "dr-valve",
                     "from": at("08:00"), "to": at("08:30") }),
            &[],
        )
        .await;
    assert_eq!(waiting.status(), 201);
    let entry: Value = waiting.json().await.unwrap();

    let archived = app
        .command(&ada, "archive", 1, &json!({ "reason": "moved abroad" }))
        .await;
    assert_eq!(archived.status(), 200);

    // The process manager reacts to the archive, shortly after its commit.
    let id = visit["appointment_id"].as_str().unwrap();
    let cancelled = until_status(&app, id, "cancelled").await;
    assert_eq!(cancelled["cancellation"]["reason"], "record-archived");
    let entry_id = entry["appointment_id"].as_str().unwrap();
    let left = until_status(&app, entry_id, "cancelled").await;
    assert_ne!(left["status"], "waitlist", "{left}");
    let other = id_of(&app.register_person(401, None).await);
    let (status, _) = book(
        &app,
        &other,
        &at("08:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "the archived patient's time is free");
    let (status, _) = book(&app, &ada, &at("09:00"), json!({})).await;
    assert_eq!(status, 409, "an archived patient books nothing");
    app.stop().await;
}

#[tokio::test]
async fn a_service_needing_equipment_gets_it_with_the_room() {
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    for (id, capabilities) in [
        ("ecg-1", json!(["ecg"])),
        ("treadmill-1", json!(["ecg", "stress"])),
    ] {
        let (status, body) = put(
            &app,
            &format!("/v1/resources/{id}"),
            &json!({ "kind": "equipment", "name": id, "capabilities": capabilities }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = put(
        &app,
        "/v1/services/stress-test",
        &json!({ "name": "Stress test", "minutes": 60, "specialty": "cardiology", "room_type": "exam", "capabilities": ["stress"] }),
    )
    .await;
    assert_eq!(status, 201);
    let day = format!("from={MONDAY}T00:00:00Z&to={MONDAY}T23:00:00Z");

    let (status, slots) = get(
        &app,
        &format!("/v1/availability?service=stress-test&practitioner=dr-heart&{day}"),
    )
    .await;

    assert_eq!(status, 200, "{slots}");
    assert!(slots["slots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["equipment"] == json!(["treadmill-1"]) && s["room"] == "exam-1"));
    let ada = id_of(&app.register_person(500, None).await);
    let (status, visit) = book(
        &app,
        &ada,
        &at("08:00"),
        json!({ "service": "stress-test", "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{visit}");
    assert_eq!(
        visit["booking"]["resources"],
        json!(["dr-heart", "exam-1", "treadmill-1"])
    );
    // The treadmill is busy then: another stress test at the same time cannot have it.
    let bob = id_of(&app.register_person(501, None).await);
    let (status, _) = book(
        &app,
        &bob,
        &at("08:00"),
        json!({ "service": "stress-test", "practitioner": "dr-valve" }),
    )
    .await;
    assert_eq!(status, 409);
    app.stop().await;
}

#[tokio::test]
async fn wait_list_events_and_offers_are_published_and_match_their_schemas() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let offset = Arc::new(AtomicI64::new(0));
    let moved = offset.clone();
    let app = TestApp::spawn_with(AppOptions {
        clock: Some(Arc::new(move || {
            crate::helpers::fixed_now() + chrono::Duration::seconds(moved.load(Ordering::SeqCst))
        })),
        configure: Some(Arc::new(|s| s.auth.idle_timeout_secs = 10_000_000)),
        ..AppOptions::default()
    })
    .await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(600, None).await);
    let joined = app
        .post(
            "/v1/waitlist",
            &scheduler(&app),
            &json!({ "patient_id": ada, "service": "cardiology-consult", "practitioner": "dr-heart",
                     "from": at("08:00"), "to": at("08:30"), "priority": "urgent" }),
            &[],
        )
        .await;
    assert_eq!(joined.status(), 201);
    let id = joined.json::<Value>().await.unwrap()["appointment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The time is free: an offer is made at once; it expires (and that place is not offered
    // to this entry again, the only one in its window); the entry is then a mistake.
    until_status(&app, &id, "pending").await;
    offset.store(11 * 60, Ordering::SeqCst);
    until_status(&app, &id, "waitlist").await;
    let (_, current) = get(&app, &format!("/v1/appointments/{id}")).await;
    let version = current["version"].as_u64().unwrap();
    let (status, body) = act(
        &app,
        &id,
        "entered-in-error",
        version,
        json!({ "reason": "duplicate entry" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let prefix = &app.settings.kafka.topic_prefix;
    let brokers = app.settings.kafka.brokers.clone().unwrap();
    let appointments = consumer_for(
        &brokers,
        &format!("{prefix}{}", schemas::topics::APPOINTMENT),
    );
    let notifications = consumer_for(
        &brokers,
        &format!("{prefix}{}", schemas::topics::NOTIFICATIONS),
    );
    let records = consume_until(&appointments, |r| {
        r.iter()
            .any(|m| published(m).event_type == "AppointmentEnteredInError")
    })
    .await;
    let mut types = std::collections::BTreeSet::new();
    for record in &records {
        let event = published(record);
        assert_matches_schema_in("appointment/v1", &event.event_type, &app.open(record).await);
        types.insert(event.event_type);
    }
    // The entry may be offered its next free place after the first offer expired.
    for expected in [
        "AppointmentCreated",
        "AppointmentOffered",
        "AppointmentOfferExpired",
        "AppointmentEnteredInError",
    ] {
        assert!(types.contains(expected), "{expected} not in {types:?}");
    }
    let notices = consume_until(&notifications, |r| !r.is_empty()).await;
    let offer = published(&notices[0]);
    assert_eq!(offer.event_type, "WaitlistOffer");
    assert_eq!(crate::helpers::key(&notices[0]), ada);
    assert_matches_schema_in(
        "notification/v1",
        &offer.event_type,
        &app.open(&notices[0]).await,
    );
    app.stop().await;
}

#[tokio::test]
async fn every_appointment_and_notification_event_is_in_the_audit_log() {
    // Arrange
    let app = TestApp::spawn().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(3, None).await);
    let (status, visit) = book(&app, &ada, &at("08:00"), json!({})).await;
    assert_eq!(status, 201, "{visit}");
    let id = visit["appointment_id"].as_str().unwrap().to_owned();
    let (status, body) = act(&app, &id, "cancel", 1, json!({ "reason": "patient" })).await;
    assert_eq!(status, 200, "{body}");
    let auditor = app.token("auditor-1", &["auditor"]);

    // Act and assert: the appointment's events, under the patient they are about.
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Appointment' AND aggregate_id = $1
          ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(stored.len() >= 2, "{stored:?}");
    eventually("the appointment's events in the audit log", || async {
        let body: Value = app
            .get(
                &format!("/v1/audit/entries?patient={ada}&kind=event&limit=100"),
                &auditor,
            )
            .await
            .json()
            .await
            .unwrap();
        let audited: Vec<String> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["detail"]["aggregate_id"] == id.as_str())
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect();
        audited == stored
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_archive_however_written_cancels_the_patients_appointments_ahead() {
    // Arrange: a booked appointment; the patient archived straight through the event store, as
    // an import or a crash right after the commit would leave it, with no API handler after it.
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(402, None).await);
    let (status, visit) = book(&app, &ada, &at("08:00"), json!({})).await;
    assert_eq!(status, 201, "{visit}");
    let secrets = app.settings.secrets().unwrap();
    let store =
        event_store::store::PatientStore::new(app.pool.clone(), secrets.keys, secrets.chain);

    // Act
    store
        .execute(
            domain::patient::PatientId::parse("id", &ada).unwrap(),
            Some(1),
            domain::patient::PatientCommand::Archive(domain::patient::ArchivePatient {
                reason: domain::patient::Reason::parse("reason", "moved abroad").unwrap(),
                at: crate::helpers::fixed_now(),
            }),
            event_store::command::CommandMetadata {
                user_id: "importer".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Assert
    let id = visit["appointment_id"].as_str().unwrap();
    let cancelled = until_status(&app, id, "cancelled").await;
    assert_eq!(cancelled["cancellation"]["reason"], "record-archived");
    app.stop().await;
}

/// Options for a test service running the API alone: the background work runs elsewhere.
fn api_alone() -> AppOptions {
    AppOptions {
        kafka: false,
        roles: Roles {
            api: true,
            relay: false,
            projectors: false,
            background: false,
        },
        ..AppOptions::default()
    }
}

/// Starts `patient-service project` (projectors and background work) on `app`'s database.
fn start_background(app: &TestApp) -> Running {
    start_role(app, "project")
}

/// Starts `patient-service <role>` on `app`'s database.
fn start_role(app: &TestApp, role: &str) -> Running {
    Running(
        crate::helpers::service_command(role)
            .env("DATABASE_URL", &app.database_url)
            .envs(crate::helpers::SECURITY_ENV)
            .env_remove("KAFKA_BROKERS")
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn appointments_of_a_patient_archived_while_the_background_was_killed_are_cancelled_after_restart(
) {
    // Arrange: the API alone in this process; the background work in another, which has
    // started following the stream.
    let app = TestApp::spawn_with(api_alone()).await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(403, None).await);
    let (status, visit) = book(&app, &ada, &at("08:00"), json!({})).await;
    assert_eq!(status, 201, "{visit}");
    let mut background = start_background(&app);
    eventually(
        "the process manager to take its place in the stream",
        || async {
            let started: i64 =
                sqlx::query_scalar("SELECT count(*) FROM process_manager_checkpoints")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap_or(0);
            started == 1
        },
    )
    .await;

    // Act: the background dies with SIGKILL; the patient is archived meanwhile; it restarts.
    background.kill().unwrap();
    background.wait().unwrap();
    let archived = app
        .command(&ada, "archive", 1, &json!({ "reason": "moved abroad" }))
        .await;
    assert_eq!(archived.status(), 200);
    let id = visit["appointment_id"].as_str().unwrap();
    let (_, still) = get(&app, &format!("/v1/appointments/{id}")).await;
    assert_eq!(
        still["status"], "booked",
        "nothing reacted while it was down"
    );
    let mut restarted = start_background(&app);

    // Assert
    let cancelled = until_status(&app, id, "cancelled").await;
    assert_eq!(cancelled["cancellation"]["reason"], "record-archived");
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    app.stop().await;
}

/// Books as the scheduler with `key` as `Idempotency-Key`; returns the status, the body and
/// whether the answer was a replay.
async fn book_with_key(app: &TestApp, body: &Value, key: &str) -> (u16, Value, bool) {
    let response = app
        .post(
            "/v1/appointments",
            &scheduler(app),
            body,
            &[("idempotency-key", key)],
        )
        .await;
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        replayed,
    )
}

async fn appointments_stored(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Appointment'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn twenty_bookings_at_once_under_one_key_book_once_and_all_answer_the_same_appointment() {
    // Arrange
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(501, None).await);
    let body = json!({ "patient_id": ada, "service": "cardiology-consult", "start": at("08:00") });

    // Act
    let answers =
        futures::future::join_all((0..20).map(|_| book_with_key(&app, &body, "visit-1"))).await;
    let (status, again, replayed) = book_with_key(&app, &body, "visit-1").await;
    let mut elsewhere = body.clone();
    elsewhere["start"] = json!(at("09:00"));
    let (other_status, other, _) = book_with_key(&app, &elsewhere, "visit-1").await;

    // Assert
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body, _)| {
            assert_eq!(*status, 201, "{body}");
            body["appointment_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one appointment answered: {ids:?}");
    assert_eq!(
        answers.iter().filter(|(_, _, replayed)| !replayed).count(),
        1,
        "the others are replays of the first answer"
    );
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(
        again["appointment_id"].as_str(),
        ids.first().map(String::as_str)
    );
    assert_eq!(appointments_stored(&app).await, 1);
    assert_eq!(other_status, 422, "{other}");
    assert_eq!(other["type"], "/problems/idempotency-key-reused");
    app.stop().await;
}

#[tokio::test]
async fn a_booking_refused_under_a_key_is_refused_again_when_repeated_and_a_new_key_tries_afresh() {
    // Arrange: both cardiologists busy at 08:00.
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(502, None).await);
    let grace = id_of(&app.register_person(503, None).await);
    let alan = id_of(&app.register_person(504, None).await);
    let (status, first) = book(&app, &ada, &at("08:00"), json!({})).await;
    assert_eq!(status, 201, "{first}");
    let body =
        json!({ "patient_id": grace, "service": "cardiology-consult", "start": at("08:00") });
    let (refused, problem, _) = book_with_key(&app, &body, "grace-1").await;
    assert_eq!(refused, 409, "{problem}");
    let (status, _) = book(&app, &alan, &at("08:00"), json!({})).await;
    assert_eq!(status, 409, "the room is taken by then as well");
    let id = first["appointment_id"].as_str().unwrap();
    let (status, cancelled) = act(&app, id, "cancel", 1, json!({ "reason": "patient-sick" })).await;
    assert_eq!(status, 200, "{cancelled}");

    // Act
    let (again, again_problem, replayed) = book_with_key(&app, &body, "grace-1").await;
    let (fresh, booked, _) = book_with_key(&app, &body, "grace-2").await;

    // Assert
    assert_eq!((again, replayed), (409, true), "{again_problem}");
    assert_eq!(again_problem["type"], problem["type"]);
    assert_eq!(fresh, 201, "{booked}");
    app.stop().await;
}

#[tokio::test]
async fn joining_the_wait_list_twice_under_one_key_joins_once() {
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(505, None).await);
    let body = json!({
        "patient_id": ada, "service": "cardiology-consult",
        "from": at("08:00"), "to": at("12:00"),
    });
    let join = || async {
        let response = app
            .post(
                "/v1/waitlist",
                &scheduler(&app),
                &body,
                &[("idempotency-key", "wait-1")],
            )
            .await;
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };

    let answers = futures::future::join_all((0..5).map(|_| join())).await;

    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 201, "{body}");
            body["appointment_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(appointments_stored(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_block_added_five_times_at_once_under_one_key_is_added_once() {
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let body = json!({ "from": at("08:00"), "to": at("10:00"), "reason": "leave" });
    let add = |body: Value| {
        let app = &app;
        async move {
            let response = app
                .post(
                    "/v1/resources/dr-valve/blocks",
                    &scheduler(app),
                    &body,
                    &[("idempotency-key", "leave-1")],
                )
                .await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let answers = futures::future::join_all((0..5).map(|_| add(body.clone()))).await;
    let mut other = body.clone();
    other["reason"] = json!("holiday");
    let (other_status, problem) = add(other).await;

    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 201, "{body}");
            body["block_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduling_blocks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(other_status, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    app.stop().await;
}

/// The backend holding the background runner's advisory lock, if any.
async fn background_lock_holder(app: &TestApp) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND objsubid = 2
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn one_background_runner_is_active_and_another_takes_over_when_it_dies() {
    // Arrange: the API alone in this process; the background role in one process.
    let app = TestApp::spawn_with(api_alone()).await;
    let start = || start_role(&app, "background");
    let mut first = start();
    eventually("the first runner to take the lock", || async {
        background_lock_holder(&app).await.is_some()
    })
    .await;
    let holder = background_lock_holder(&app).await;
    let mut second = start();

    // Act: the active runner dies.
    first.kill().unwrap();
    first.wait().unwrap();

    // Assert: the one standing by takes over, and works: an archive cancels the appointment.
    eventually("the second runner to take the lock", || async {
        let now = background_lock_holder(&app).await;
        now.is_some() && now != holder
    })
    .await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(601, None).await);
    let (status, visit) = book(&app, &ada, &at("08:00"), json!({})).await;
    assert_eq!(status, 201, "{visit}");
    let archived = app
        .command(&ada, "archive", 1, &json!({ "reason": "moved abroad" }))
        .await;
    assert_eq!(archived.status(), 200);
    let id = visit["appointment_id"].as_str().unwrap();
    until_status(&app, id, "cancelled").await;
    second.kill().unwrap();
    second.wait().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_fulfilled_appointment_becomes_an_encounter_in_the_patients_chart_once() {
    // Arrange: a visit booked, then the patient arrives, is checked in and seen.
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(701, None).await);
    let (status, visit) = book(
        &app,
        &ada,
        &at("08:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{visit}");
    let id = visit["appointment_id"].as_str().unwrap().to_owned();

    // Act
    for (version, step) in [(1, "arrive"), (2, "check-in"), (3, "fulfil")] {
        let (status, moved) = act(&app, &id, step, version, json!({})).await;
        assert_eq!(status, 200, "{step}: {moved}");
    }

    // Assert: the process manager records the encounter, naming the appointment.
    let own = app.patient_token(&ada);
    let list = || async {
        let response = app
            .get(&format!("/v1/patients/{ada}/encounters"), &own)
            .await;
        response.json::<Value>().await.unwrap_or(Value::Null)
    };
    eventually("the encounter of the fulfilled appointment", || async {
        list().await["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
    })
    .await;
    let encounters = list().await;
    let encounter = &encounters["items"][0];
    assert_eq!(encounter["appointment_id"], id.as_str());
    assert_eq!(encounter["status"], "finished");
    assert_eq!(encounter["class"], "AMB");
    assert_eq!(encounter["encounter_type"]["text"], "cardiology-consult");
    assert_eq!(encounter["practitioner"], "dr-heart");
    assert_eq!(encounter["location"], "exam-1");
    assert_eq!(encounter["start"], visit["booking"]["interval"]["start"]);
    let streams: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'ClinicalEntry'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(streams, 1, "recorded once");
    app.stop().await;
}

#[tokio::test]
async fn an_appointment_is_booked_and_read_through_fhir_and_a_taken_time_answers_409() {
    use crate::fhir::{fhir_get, fhir_send};
    // Arrange
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(801, None).await);
    let bob = id_of(&app.register_person(802, None).await);
    let token = scheduler(&app);
    let appointment = |patient: &str| {
        json!({
            "resourceType": "Appointment",
            "status": "booked",
            "serviceType": [{ "coding": [{ "system": "urn:patient-service:service", "code": "cardiology-consult" }] }],
            "start": at("08:00"),
            "participant": [
                { "actor": { "reference": format!("Patient/{patient}") }, "status": "accepted" },
                { "actor": { "reference": "Practitioner/dr-heart" }, "status": "accepted" }
            ]
        })
    };

    // Act
    let (status, headers, booked) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Appointment",
        &token,
        &appointment(&ada),
        &[],
    )
    .await;

    // Assert: booked through the native booking, read back the same.
    assert_eq!(status, 201, "{booked}");
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(booked["status"], "booked");
    assert_eq!(
        booked["participant"][1]["actor"]["reference"],
        "Practitioner/dr-heart"
    );
    assert_eq!(booked["participant"][2]["actor"]["display"], "exam-1");
    let id = booked["id"].as_str().unwrap();
    let (_, native) = get(&app, &format!("/v1/appointments/{id}")).await;
    assert_eq!(native["booking"]["interval"]["start"], booked["start"]);
    let (status, _, read) = fhir_get(&app, &format!("/Appointment/{id}"), Some(&token), &[]).await;
    assert_eq!((status, &read), (200, &booked));
    // The same practitioner at the same time for another patient: 409, naming why.
    let (status, _, conflict) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Appointment",
        &token,
        &appointment(&bob),
        &[],
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["issue"][0]["code"], "conflict");
    assert!(conflict["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .starts_with("time-taken"));
    app.stop().await;
}

#[tokio::test]
async fn fhir_appointments_are_searched_by_patient_practitioner_date_and_status_with_history() {
    use crate::fhir::fhir_get;
    // Arrange: Ada at 08:00 with dr-heart, Bob at 09:00 with dr-valve, Ada at 09:30 with
    // dr-heart, then cancelled.
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(811, None).await);
    let bob = id_of(&app.register_person(812, None).await);
    let token = scheduler(&app);
    let with = |practitioner: &str| json!({ "practitioner": practitioner });
    let (status, first) = book(&app, &ada, &at("08:00"), with("dr-heart")).await;
    assert_eq!(status, 201, "{first}");
    let (status, booked) = book(&app, &bob, &at("09:00"), with("dr-valve")).await;
    assert_eq!(status, 201, "{booked}");
    let (status, later) = book(&app, &ada, &at("09:30"), with("dr-heart")).await;
    assert_eq!(status, 201, "{later}");
    let later_id = later["appointment_id"].as_str().unwrap().to_owned();
    let (status, cancelled) = act(
        &app,
        &later_id,
        "cancel",
        1,
        json!({ "reason": "patient-sick" }),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    let search = |query: String| {
        let app = &app;
        let token = token.clone();
        async move {
            fhir_get(app, &format!("/Appointment?{query}"), Some(&token), &[])
                .await
                .2
        }
    };
    crate::helpers::eventually("the appointments read model", || async {
        search(format!("patient={ada}&status=cancelled")).await["total"] == 1
    })
    .await;

    // Act + assert: by patient, by start.
    let found = search(format!("patient=Patient/{ada}")).await;
    assert_eq!(found["total"], 2, "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], first["appointment_id"]);
    assert_eq!(found["entry"][1]["resource"]["status"], "cancelled");
    // By practitioner and a date range; by status.
    let monday = MONDAY;
    let found = search(format!(
        "practitioner=Practitioner/dr-heart&date=ge{monday}&date=lt{monday}T08:30:00Z"
    ))
    .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], first["appointment_id"]);
    let found = search(format!("date={monday}&status=booked&_count=1")).await;
    assert_eq!(found["total"], 2, "{found}");
    assert_eq!(found["entry"].as_array().unwrap().len(), 1);
    assert!(found["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
    // An unknown parameter or status is refused, naming it.
    let (status, _, refused) =
        fhir_get(&app, "/Appointment?actor=Patient/x", Some(&token), &[]).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["issue"][0]["expression"][0], "actor");
    let (status, _, _) = fhir_get(&app, "/Appointment?status=sleeping", Some(&token), &[]).await;
    assert_eq!(status, 400);

    // History and vread: booked, then cancelled.
    let (status, _, history) = fhir_get(
        &app,
        &format!("/Appointment/{later_id}/_history"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["total"], 2);
    assert_eq!(history["entry"][0]["resource"]["status"], "cancelled");
    let (status, _, first_version) = fhir_get(
        &app,
        &format!("/Appointment/{later_id}/_history/1"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first_version["status"], "booked");
    assert_eq!(first_version["meta"]["versionId"], "1");

    // A patient searches their own appointments only.
    let own = app.patient_token(&ada);
    let (status, _, _) = fhir_get(&app, "/Appointment", Some(&own), &[]).await;
    assert_eq!(status, 400, "a patient names themselves");
    let (status, _, theirs) = fhir_get(
        &app,
        &format!("/Appointment?patient={ada}"),
        Some(&own),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(theirs["total"], 2);
    let (status, _, _) = fhir_get(
        &app,
        &format!("/Appointment?patient={bob}"),
        Some(&own),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn a_fhir_appointment_update_is_the_native_step_it_amounts_to() {
    use crate::fhir::fhir_send;
    // Arrange: a hold at 08:00 with dr-heart, through FHIR.
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let ada = id_of(&app.register_person(821, None).await);
    let token = scheduler(&app);
    let held = json!({
        "resourceType": "Appointment",
        "status": "pending",
        "serviceType": [{ "coding": [{ "system": "urn:patient-service:service", "code": "cardiology-consult" }] }],
        "start": at("08:00"),
        "participant": [
            { "actor": { "reference": format!("Patient/{ada}") }, "status": "accepted" },
            { "actor": { "reference": "Practitioner/dr-heart" }, "status": "accepted" }
        ]
    });
    let (status, _, created) = fhir_send(
        &app,
        reqwest::Method::POST,
        "/Appointment",
        &token,
        &held,
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/Appointment/{}", created["id"].as_str().unwrap());
    let put = |body: Value, version: &'static str| {
        let (app, token, path) = (&app, token.clone(), path.clone());
        async move {
            let etag = format!("W/\"{version}\"");
            let (status, _, answer) = fhir_send(
                app,
                reqwest::Method::PUT,
                &path,
                &token,
                &body,
                &[
                    ("if-match", &etag),
                    ("x-change-reason", "as the patient asked"),
                ],
            )
            .await;
            (status, answer)
        }
    };

    // Act + assert: booked confirms the hold.
    let mut confirmed = created.clone();
    confirmed["status"] = json!("booked");
    let (status, answer) = put(confirmed, "1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "booked");
    assert_eq!(answer["meta"]["versionId"], "2");
    // A new start is a reschedule; a new status with it is refused.
    let mut moved = answer.clone();
    moved["start"] = json!(at("09:00"));
    let mut both = moved.clone();
    both["status"] = json!("arrived");
    let (status, refused) = put(both, "2").await;
    assert_eq!(status, 422, "{refused}");
    let (status, answer) = put(moved, "2").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["start"], at("09:00"));
    let (_, native) = get(
        &app,
        &format!("/v1/appointments/{}", created["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        native["booking"]["interval"]["start"],
        at("09:00"),
        "{native}"
    );
    // Stale, then cancelled with HL7's reason "patient: sick".
    let mut cancelled = answer.clone();
    cancelled["status"] = json!("cancelled");
    cancelled["cancelationReason"] = json!({ "coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason", "code": "pat-swl" }] });
    let (status, _) = put(cancelled.clone(), "2").await;
    assert_eq!(status, 412);
    let (status, answer) = put(cancelled, "3").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(
        answer["cancelationReason"]["coding"][0]["code"],
        "patient-sick"
    );
    // The time is free again: another patient books it.
    let bob = id_of(&app.register_person(822, None).await);
    let (status, rebooked) = book(
        &app,
        &bob,
        &at("09:00"),
        json!({ "practitioner": "dr-heart" }),
    )
    .await;
    assert_eq!(status, 201, "{rebooked}");
    app.stop().await;
}

#[tokio::test]
async fn the_scheduling_resources_read_as_fhir_practitioners_and_locations() {
    use crate::fhir::fhir_get;
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let token = scheduler(&app);

    let (status, _, practitioners) = fhir_get(&app, "/Practitioner", Some(&token), &[]).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = practitioners["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"dr-heart"), "{ids:?}");
    let (status, _, heart) = fhir_get(&app, "/Practitioner/dr-heart", Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(heart["qualification"][0]["code"]["text"], "cardiology");
    let (status, _, rooms) = fhir_get(&app, "/Location?name=exam", Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(rooms["total"], 1);
    assert_eq!(rooms["entry"][0]["resource"]["id"], "exam-1");
    assert_eq!(rooms["entry"][0]["resource"]["type"][0]["text"], "exam");
    let (status, _, _) = fhir_get(&app, "/Location/dr-heart", Some(&token), &[]).await;
    assert_eq!(status, 404, "a practitioner is no location");
    let (status, body) = put(
        &app,
        "/v1/resources/ecg-1",
        &json!({ "kind": "equipment", "name": "ECG cart", "capabilities": ["ecg"] }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, devices) = fhir_get(&app, "/Device", Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        devices["entry"][0]["resource"]["deviceName"][0]["name"],
        "ECG cart"
    );
    let (status, _, _) = fhir_get(&app, "/Device?colour=red", Some(&token), &[]).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn free_slots_are_searched_as_fhir_slots_of_each_practitioners_schedule() {
    use crate::fhir::fhir_get;
    let app = TestApp::without_kafka().await;
    clinic(&app).await;
    let token = scheduler(&app);

    let (status, _, schedules) = fhir_get(&app, "/Schedule", Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(schedules["total"], 2, "one per practitioner");
    let (status, _, heart) = fhir_get(&app, "/Schedule/dr-heart", Some(&token), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(heart["actor"][0]["reference"], "Practitioner/dr-heart");

    let query = format!(
        "/Slot?service-type=cardiology-consult&schedule=Schedule/dr-heart&start=ge{MONDAY}&start=lt{MONDAY}T23:59:00Z&_count=5"
    );
    let (status, _, slots) = fhir_get(&app, &query, Some(&token), &[]).await;
    assert_eq!(status, 200, "{slots}");
    let entries = slots["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{slots}");
    for entry in entries {
        let slot = &entry["resource"];
        assert_eq!(slot["status"], "free");
        assert_eq!(slot["schedule"]["reference"], "Schedule/dr-heart");
        assert!(slot["start"].as_str().unwrap().starts_with(MONDAY));
    }
    // Booking the first takes it out of the next search.
    let first = entries[0]["resource"]["start"].as_str().unwrap().to_owned();
    let ada = id_of(&app.register_person(901, None).await);
    let booked = app
        .post(
            "/v1/appointments",
            &token,
            &json!({ "patient_id": ada, "service": "cardiology-consult", "start": first, "practitioner": "dr-heart" }),
            &[],
        )
        .await;
    assert_eq!(booked.status(), 201);
    let (_, _, after) = fhir_get(&app, &query, Some(&token), &[]).await;
    assert_ne!(after["entry"][0]["resource"]["start"], first.as_str());
    let (status, _, outcome) = fhir_get(&app, "/Slot?start=ge2026-12-01", Some(&token), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(outcome["issue"][0]["expression"][0], "service-type");
    app.stop().await;
}
