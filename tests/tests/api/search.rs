//! The patient_search read model over HTTP.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn search_matches_prefixes_ignoring_case_and_accents_and_combines_criteria() {
    // Arrange
    let app = TestApp::without_kafka().await;
    let zoe = app.register_ok("Zoë", "Müller", "1990-12-10").await;
    app.register_ok("Hans", "Mueller", "1985-01-01").await;
    app.register_ok("Zora", "Miller", "1972-04-21").await;
    app.search_until("family=m", 3).await;

    // Act and assert
    assert_eq!(app.search_until("family=MÜL", 1).await[0]["id"], zoe["id"]);
    assert_eq!(app.search_until("family=mul", 1).await[0]["id"], zoe["id"]);
    assert_eq!(app.search_until("given=zo", 2).await.len(), 2);
    assert_eq!(
        app.search_until("given=zoe&birth_date=1990-12-10", 1).await[0]["id"],
        zoe["id"]
    );
    assert_eq!(app.search_until("birth_date=1990-12-10", 1).await.len(), 1);
    let mrn = zoe["mrn"].as_str().unwrap();
    assert_eq!(
        app.search_until(&format!("mrn={mrn}"), 1).await[0]["id"],
        zoe["id"]
    );
    assert_eq!(
        app.search_until("family=%25", 0).await.len(),
        0,
        "LIKE wildcards are literal"
    );
    app.stop().await;
}

#[tokio::test]
async fn search_pages_with_a_next_link() {
    let app = TestApp::without_kafka().await;
    for i in 0..5 {
        app.register_person(i, Some("Page")).await;
    }
    app.search_until("family=page", 5).await;
    let token = app.token("c", &["clinician"]);

    let first: Value = app
        .get("/v1/patients?family=page&limit=2", &token)
        .await
        .json()
        .await
        .unwrap();
    let next = first["next"].as_str().unwrap().to_owned();
    let second: Value = app.get(&next, &token).await.json().await.unwrap();
    let last: Value = app
        .get("/v1/patients?family=page&limit=2&offset=4", &token)
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert_ne!(first["items"][0]["id"], second["items"][0]["id"]);
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert!(last["next"].is_null());
    app.stop().await;
}
