//! The synthetic patients a benchmark registers through the API.

/// A registration of synthetic person `i`. Among thousands of synthetic people a few look
/// alike enough for the matcher (same birth date, similar names), so the override is sent:
/// the matcher still runs on every registration, and none is refused.
pub fn registration(i: usize) -> serde_json::Value {
    let mut body = synthetic::registration(i as u64, None);
    body["duplicate_override"] = serde_json::json!({ "reason": "benchmark population" });
    body
}

/// Registers synthetic person `i` over HTTP, as a front desk does (with an `Idempotency-Key`,
/// so a retry could not register them twice); returns their id.
///
/// # Errors
///
/// When the request fails or is not answered 201.
pub async fn register(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/v1/patients"))
        .bearer_auth(token)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&registration(i))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "registration answered {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await?;
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}
