//! What the benchmarks that drive a whole in-process portal share: a signed-in HTTP client
//! that calls server functions like the browser, cleanup through the portal's own delete
//! jobs, and percentiles.
#![allow(dead_code)]
use std::time::Duration;
use uuid::Uuid;

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub async fn call(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<serde_json::Value> {
        let res = self
            .http
            .post(format!("{}/api/{endpoint}", self.base))
            .header("Origin", "http://127.0.0.1:3000")
            .header("Sec-Fetch-Site", "same-origin")
            .form(form)
            .send()
            .await?;
        let status = res.status();
        let body = res.text().await?;
        anyhow::ensure!(status.is_success(), "{endpoint}: {status} {body}");
        Ok(serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }
}

/// Deletes every VM through the portal's own delete job and waits for it.
pub async fn cleanup(client: &Client, owner: &sqlx::PgPool, host: &str) {
    let vms: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT uuid, name FROM vms WHERE deleted_at IS NULL")
            .fetch_all(owner)
            .await
            .unwrap_or_default();
    for (uuid, name) in vms {
        let _ = client
            .call(
                "vm_action",
                &[
                    ("host_id", host),
                    ("uuid", &uuid.to_string()),
                    ("action", "delete"),
                    ("confirm", &name),
                ],
            )
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM vms WHERE deleted_at IS NULL")
        .fetch_one(owner)
        .await
        .unwrap_or(0)
        > 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
