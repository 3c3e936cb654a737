//! Webhooks. An event is published in the transaction that makes it happen (`publish`, the
//! SQL `publish_event`): one delivery row and one `webhook` job per endpoint that wants it —
//! the outbox. The job POSTs the stored body, signed per Standard Webhooks (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), and only a 2xx counts.
//! Failures are retried with growing, jittered delays for a day; then, or at once on
//! 410 Gone, the endpoint is turned off and whoever made it is told. Redirects are not
//! followed, and unless the fleet admin allowed it (`--webhooks-allow-private-networks`) no
//! request goes to a loopback, link-local or private address, whatever a name resolves to.
use crate::notifications::{self, Notice};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz;
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Result};
use crate::platform::jobs::{Job, Outcome};
use app::account::Actor;
use app::error::AppError;
use app::notifications::NotificationKind;
use app::seam::{RequestCtx, Webhooks};
use app::webhooks::{
    CreatedWebhook, NewWebhook, WebhookDelivery, WebhookEndpoint, WebhookOverview, WebhookScope,
    EVENT_TYPES,
};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sqlx::PgPool;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

/// Publishes an event of `tenant` (`None`: the fleet's own) to every endpoint that wants it.
pub async fn publish(
    tx: &mut Tx,
    tenant: Option<Uuid>,
    event_type: &str,
    data: serde_json::Value,
    at: OffsetDateTime,
) -> Result<()> {
    sqlx::query("SELECT publish_event($1, $2, $3, $4)")
        .bind(tenant)
        .bind(event_type)
        .bind(data)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The Standard Webhooks signature of one attempt: HMAC-SHA256, keyed by the secret's
/// base64 part, over `id.timestamp.body`.
pub fn sign(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> std::result::Result<String, String> {
    let key = B64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("the endpoint's secret is not base64: {e}"))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// A new signing secret: 24 random bytes, as Standard Webhooks writes them.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    format!("whsec_{}", B64.encode(bytes))
}

/// Which range makes `ip` an internal address, if it is one.
pub fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_broadcast() || v4.is_multicast() || a >= 240 {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_range(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// Resolves names for outgoing webhooks and keeps only public addresses, so that a name
/// changed to point inside (DNS rebinding) is refused at the connection, not only when the
/// endpoint was saved.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| internal_range(a.ip()).is_none())
                .collect();
            if public.is_empty() {
                let shown = all.first().map(|a| a.ip().to_string()).unwrap_or_default();
                return Err(format!(
                    "{host} resolves to {shown}, an internal address: refused (webhooks to private networks are not allowed)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why `url` may not receive webhooks, in words for the form; `None` when it may.
pub async fn refuse_url(url: &str, allow_private: bool) -> Option<String> {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Some(format!("Not a URL: {e}.")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some("Use an http:// or https:// URL.".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some("Leave credentials out of the URL: every delivery is signed with the endpoint's secret.".into());
    }
    let Some(host) = parsed
        .host_str()
        .map(|h| h.trim_matches(['[', ']']).to_string())
    else {
        return Some("The URL names no host.".into());
    };
    if allow_private {
        return None;
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.map(|a| a.ip()).collect(),
            Err(e) => return Some(format!("{host} could not be resolved: {e}.")),
        },
    };
    addrs.into_iter().find_map(|ip| {
        internal_range(ip).map(|range| {
            format!("{host} is {ip}, a {range} address: webhooks may not go to internal networks unless the fleet admin allows it.")
        })
    })
}

/// Sends the `webhook` jobs.
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    /// The first retry's delay; each next one is four times longer, at most four hours.
    retry_base: Duration,
    /// How long an event is retried before its endpoint is turned off.
    give_up_after: time::Duration,
    clock: Arc<dyn Clock>,
}

impl Sender {
    pub fn new(
        allow_private: bool,
        retry_base: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Sender> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("Concierge-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4);
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Sender {
            client: builder.build()?,
            allow_private,
            retry_base,
            give_up_after: time::Duration::days(1),
            clock,
        })
    }

    /// The delay before attempt `n + 1` after `n` failed: base × 4^(n−1), at most four hours,
    /// ± 25 % so that endpoints coming back are not hit by every retry at once.
    fn delay(&self, failed: i32) -> Duration {
        let grown = self.retry_base.as_secs_f64() * 4f64.powi(failed.clamp(1, 12) - 1);
        let capped = grown.min(4.0 * 3600.0);
        Duration::from_secs_f64(capped * rand::rng().random_range(0.75..1.25))
    }
}

#[derive(sqlx::FromRow)]
struct Pending {
    state: String,
    body: String,
    attempts: i32,
    created_at: OffsetDateTime,
    endpoint_id: Uuid,
    tenant_id: Option<Uuid>,
    url: String,
    secret: String,
    enabled: bool,
    created_by: Option<Uuid>,
}

/// One attempt at one delivery (the `webhook` job, keyed by the delivery).
pub async fn deliver(pool: &PgPool, sender: &Sender, job: &Job) -> Result<(), Outcome> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let d: Option<Pending> = sqlx::query_as(
        "SELECT d.state, d.body, d.attempts, d.created_at, e.id AS endpoint_id, e.tenant_id, e.url,
                e.secret, e.enabled, e.created_by
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = $1",
    )
    .bind(job.key)
    .fetch_optional(&mut *tx)
    .await?;
    db::done(tx);
    let Some(d) = d else {
        return Ok(()); // its endpoint was removed
    };
    if d.state != "pending" {
        return Ok(());
    }
    if !d.enabled {
        finish(pool, job.key, "failed", Some("the endpoint is turned off")).await?;
        return Ok(());
    }
    let id = format!("msg_{}", job.key.simple());
    let now = sender.clock.now();
    let signature = match sign(&d.secret, &id, now.unix_timestamp(), d.body.as_bytes()) {
        Ok(s) => s,
        Err(e) => return Err(Outcome::Fail(e)),
    };
    let started = Instant::now();
    let answer = match reqwest::Url::parse(&d.url) {
        Err(e) => Err(format!("not a URL: {e}")),
        Ok(url) => {
            let literal = url
                .host_str()
                .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok());
            match literal.and_then(internal_range) {
                Some(range) if !sender.allow_private => Err(format!(
                    "{} is a {range} address: refused (webhooks to private networks are not allowed)",
                    url.host_str().unwrap_or_default()
                )),
                _ => sender
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", now.unix_timestamp().to_string())
                    .header("webhook-signature", signature)
                    .body(d.body.clone())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| describe(&e)),
            }
        }
    };
    let took = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let attempt = d.attempts + 1;
    let (status, error) = match &answer {
        Ok(code) if (200..300).contains(code) => (Some(*code), None),
        Ok(code) if (300..400).contains(code) => (
            Some(*code),
            Some(format!("HTTP {code}: a redirect, which is not followed")),
        ),
        Ok(code) => (Some(*code), Some(format!("HTTP {code}"))),
        Err(e) => (None, Some(e.clone())),
    };
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, status, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(job.key)
    .bind(attempt)
    .bind(now)
    .bind(status.map(i32::from))
    .bind(&error)
    .bind(took)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET attempts = $2, last_status = $3, last_error = $4
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(job.key)
    .bind(attempt)
    .bind(status.map(i32::from))
    .bind(&error)
    .execute(&mut *tx)
    .await?;
    let Some(error) = error else {
        mark(&mut tx, job.key, "delivered", now).await?;
        tx.commit().await?;
        return Ok(());
    };
    let gone = status == Some(410);
    if gone || now - d.created_at >= sender.give_up_after {
        let why = if gone {
            "the receiver answered 410 Gone".to_string()
        } else {
            format!("no delivery succeeded for a day (last: {error})")
        };
        mark(&mut tx, job.key, "failed", now).await?;
        turn_off(&mut tx, &d, &why, now).await?;
        tx.commit().await?;
        return Ok(());
    }
    tx.commit().await?;
    Err(Outcome::RetryIn(error, sender.delay(attempt)))
}

/// A transport error in a few words: reqwest's chain says what actually went wrong.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    if e.is_timeout() {
        format!("timed out ({text})")
    } else {
        text
    }
}

async fn mark(tx: &mut Tx, delivery: Uuid, state: &str, at: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE webhook_deliveries SET state = $2, finished_at = $3 WHERE id = $1 AND state = 'pending'")
        .bind(delivery)
        .bind(state)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn finish(pool: &PgPool, delivery: Uuid, state: &str, error: Option<&str>) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    sqlx::query("UPDATE webhook_deliveries SET last_error = coalesce($2, last_error) WHERE id = $1 AND state = 'pending'")
        .bind(delivery)
        .bind(error)
        .execute(&mut *tx)
        .await?;
    mark(&mut tx, delivery, state, OffsetDateTime::now_utc()).await?;
    Ok(tx.commit().await?)
}

/// Turns an endpoint off after it failed, audits it and tells whoever made it.
async fn turn_off(tx: &mut Tx, d: &Pending, why: &str, now: OffsetDateTime) -> Result<()> {
    let turned = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2 WHERE id = $1 AND enabled",
    )
    .bind(d.endpoint_id)
    .bind(why)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if turned == 0 {
        return Ok(());
    }
    let event = Event::new("webhook.disable", "webhook", d.endpoint_id)
        .after(serde_json::json!({ "enabled": false, "reason": why }))
        .tenant_opt(d.tenant_id);
    audit::record(tx, &Origin::default(), event).await?;
    if let Some(owner) = d.created_by {
        notifications::send(
            tx,
            Notice {
                user: owner,
                tenant: d.tenant_id,
                kind: NotificationKind::WebhookDisabled,
                title: format!("Webhook turned off: {}", shown_url(&d.url)),
                body: format!("It was turned off because {why}. Turn it on again on the webhooks page once the receiver works."),
                link: "/webhooks".into(),
            },
            now,
        )
        .await?;
    }
    Ok(())
}

/// The URL without its query, which may carry a token.
fn shown_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A delivery job that ran out of attempts (the attempt cap is far beyond a day of retries,
/// so this is a handler error): the delivery is closed as failed.
pub async fn abandoned(pool: &PgPool, job: &Job, error: &str) {
    if let Err(e) = finish(pool, job.key, "failed", Some(error)).await {
        tracing::warn!(error = ?e, "closing a webhook delivery");
    }
}

pub struct WebhooksBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub allow_private: bool,
}

/// Where `actor` may add endpoints.
fn scopes(actor: &Actor) -> Vec<WebhookScope> {
    let mut out = Vec::new();
    if actor.fleet_admin {
        out.push(WebhookScope {
            tenant_id: None,
            name: "Fleet-wide (every tenant)".into(),
        });
    }
    out.extend(
        actor
            .administered_tenants()
            .filter(|m| !m.tenant_suspended)
            .map(|m| WebhookScope {
                tenant_id: Some(m.tenant_id),
                name: m.tenant_name.clone(),
            }),
    );
    out
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    tenant_name: Option<String>,
    url: String,
    description: String,
    event_types: Vec<String>,
    enabled: bool,
    disabled_reason: Option<String>,
    created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    endpoint_id: Uuid,
    event_type: String,
    state: String,
    attempts: i32,
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: OffsetDateTime,
}

impl WebhooksBackend {
    /// The endpoint's tenant, after checking the actor manages it; refused as not found
    /// otherwise (the identifiers of other tenants' endpoints reveal nothing).
    async fn managed(&self, actor: &Actor, id: Uuid) -> Result<Option<Uuid>> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let tenant: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT tenant_id FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        db::done(tx);
        match tenant {
            Some(t) if authz::manages_webhooks(actor, t) => Ok(t),
            _ => Err(AppError::NotFound("Webhook".into()).into()),
        }
    }

    fn scope_for(actor: &Actor, tenant: Option<Uuid>) -> Scope {
        match tenant {
            Some(t) if !actor.fleet_admin => Scope::tenant(t),
            _ => Scope::fleet(),
        }
    }
}

#[async_trait]
impl Webhooks for WebhooksBackend {
    async fn overview(&self, req: &RequestCtx) -> Result<WebhookOverview, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let scopes = scopes(actor);
            if scopes.is_empty() {
                return Err(AppError::Forbidden.into());
            }
            let mut scopes = scopes;
            let tenants: Vec<Uuid> = scopes.iter().filter_map(|s| s.tenant_id).collect();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            if actor.fleet_admin {
                // Fleet admins manage any tenant's endpoints, not only where they are members.
                let every = crate::accounts::tenants::choosable(&mut tx, true, &[]).await?;
                scopes.truncate(1);
                scopes.extend(every.into_iter().map(|(id, name)| WebhookScope {
                    tenant_id: Some(id),
                    name,
                }));
            }
            let rows: Vec<EndpointRow> = sqlx::query_as(
                "SELECT e.id, e.tenant_id, t.name AS tenant_name, e.url, e.description, e.event_types,
                        e.enabled, e.disabled_reason, e.created_at
                 FROM webhook_endpoints e LEFT JOIN tenants t ON t.id = e.tenant_id
                 WHERE $1 OR e.tenant_id = ANY($2)
                 ORDER BY t.name NULLS FIRST, e.created_at",
            )
            .bind(actor.fleet_admin)
            .bind(&tenants)
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            let deliveries: Vec<DeliveryRow> = sqlx::query_as(
                "SELECT d.id, d.endpoint_id, d.event_type, d.state, d.attempts, d.last_status,
                        d.last_error, d.created_at
                 FROM unnest($1::uuid[]) AS e(id)
                 CROSS JOIN LATERAL (SELECT * FROM webhook_deliveries d WHERE d.endpoint_id = e.id
                                     ORDER BY d.created_at DESC, d.id LIMIT 10) d",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            let endpoints = rows
                .into_iter()
                .map(|r| WebhookEndpoint {
                    recent: deliveries
                        .iter()
                        .filter(|d| d.endpoint_id == r.id)
                        .map(|d| WebhookDelivery {
                            message_id: format!("msg_{}", d.id.simple()),
                            event_type: d.event_type.clone(),
                            state: d.state.clone(),
                            attempts: d.attempts,
                            last_status: d.last_status,
                            last_error: d.last_error.clone(),
                            created_at: d.created_at,
                        })
                        .collect(),
                    id: r.id,
                    scope: WebhookScope {
                        tenant_id: r.tenant_id,
                        name: r
                            .tenant_name
                            .unwrap_or_else(|| "Fleet-wide (every tenant)".into()),
                    },
                    url: r.url,
                    description: r.description,
                    event_types: r.event_types,
                    enabled: r.enabled,
                    disabled_reason: r.disabled_reason,
                    created_at: r.created_at,
                })
                .collect();
            Ok(WebhookOverview { scopes, endpoints })
        })
        .await
    }

    async fn add(&self, req: &RequestCtx, new: NewWebhook) -> Result<CreatedWebhook, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenant = match new.scope.trim() {
                "fleet" => None,
                s => Some(s.parse::<Uuid>().map_err(|_| {
                    AppError::field("scope", "Choose the tenant whose events this endpoint receives.")
                })?),
            };
            if !authz::manages_webhooks(actor, tenant) {
                return Err(match tenant {
                    Some(t) => authz::refuse_tenant(actor, t),
                    None => AppError::Forbidden,
                }
                .into());
            }
            let url = new.url.trim().to_string();
            if url.is_empty() {
                return Err(AppError::field("url", "Enter the URL that receives the events.").into());
            }
            if url.chars().count() > 2000 {
                return Err(AppError::field("url", "Use a URL of at most 2,000 characters.").into());
            }
            if let Some(why) = refuse_url(&url, self.allow_private).await {
                return Err(AppError::field("url", why).into());
            }
            let description = new.description.trim().to_string();
            if description.chars().count() > 200 {
                return Err(AppError::field("description", "Keep the description to 200 characters.").into());
            }
            let mut events: Vec<String> = Vec::new();
            for e in &new.events {
                if !EVENT_TYPES.iter().any(|(t, _)| t == e) {
                    return Err(AppError::field("events", format!("There is no event type called \"{e}\".")).into());
                }
                if !events.contains(e) {
                    events.push(e.clone());
                }
            }
            if events.is_empty() {
                return Err(AppError::field("events", "Choose at least one kind of event.").into());
            }
            let secret = new_secret();
            let now = self.clock.now();
            let mut tx = db::begin(&self.pool, Self::scope_for(actor, tenant)).await?;
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO webhook_endpoints (tenant_id, url, description, secret, event_types, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(tenant)
            .bind(&url)
            .bind(&description)
            .bind(&secret)
            .bind(&events)
            .bind(actor.user_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let event = Event::new("webhook.create", "webhook", id)
                .after(serde_json::json!({
                    "url": shown_url(&url), "events": events, "description": description,
                }))
                .tenant_opt(tenant);
            audit::record(&mut tx, &Origin::of(req), event).await?;
            tx.commit().await?;
            Ok(CreatedWebhook { id, secret })
        })
        .await
    }

    async fn set_enabled(&self, req: &RequestCtx, id: Uuid, enabled: bool) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenant = self.managed(actor, id).await?;
            let mut tx = db::begin(&self.pool, Self::scope_for(actor, tenant)).await?;
            let changed = sqlx::query(
                "UPDATE webhook_endpoints SET enabled = $2,
                        disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END
                 WHERE id = $1 AND enabled <> $2",
            )
            .bind(id)
            .bind(enabled)
            .bind(format!("turned off by {}", actor.email))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed > 0 {
                let event = Event::new(
                    if enabled {
                        "webhook.enable"
                    } else {
                        "webhook.disable"
                    },
                    "webhook",
                    id,
                )
                .after(serde_json::json!({ "enabled": enabled }))
                .tenant_opt(tenant);
                audit::record(&mut tx, &Origin::of(req), event).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn remove(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenant = self.managed(actor, id).await?;
            let mut tx = db::begin(&self.pool, Self::scope_for(actor, tenant)).await?;
            let url: Option<String> =
                sqlx::query_scalar("DELETE FROM webhook_endpoints WHERE id = $1 RETURNING url")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(url) = url {
                let event = Event::new("webhook.remove", "webhook", id)
                    .before(serde_json::json!({ "url": shown_url(&url) }))
                    .tenant_opt(tenant);
                audit::record(&mut tx, &Origin::of(req), event).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn send_test(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenant = self.managed(actor, id).await?;
            let now = self.clock.now();
            let mut tx = db::begin(&self.pool, Self::scope_for(actor, tenant)).await?;
            let enabled: bool =
                sqlx::query_scalar("SELECT enabled FROM webhook_endpoints WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if !enabled {
                return Err(AppError::Conflict(
                    "This endpoint is turned off: turn it on to send it a test event.".into(),
                )
                .into());
            }
            let body = serde_json::json!({
                "type": "webhook.test",
                "timestamp": now.format(&time::format_description::well_known::Rfc3339).map_err(|e| AppError::Internal(e.to_string()))?,
                "data": { "endpoint_id": id, "sent_by": actor.email },
            })
            .to_string();
            let delivery: Uuid = sqlx::query_scalar(
                "INSERT INTO webhook_deliveries (endpoint_id, event_type, body, created_at)
                 VALUES ($1, 'webhook.test', $2, $3) RETURNING id",
            )
            .bind(id)
            .bind(&body)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            crate::platform::jobs::enqueue(
                &mut tx,
                crate::platform::jobs::JobKind::Webhook,
                delivery,
                serde_json::json!({}),
                1000,
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The reference implementations' published vector: a receiver's library accepts what
        // reproduces it.
        assert_eq!(
            sign(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn internal_addresses_are_named() {
        for (ip, range) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("0.0.0.0", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("fd00::1", Some("private (unique local)")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(internal_range(ip.parse().unwrap()), range, "{ip}");
        }
    }

    #[test]
    fn secrets_are_standard_webhooks_secrets() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(B64.decode(&s[6..]).unwrap().len(), 24);
        assert_ne!(s, new_secret());
    }
}
