//! Alerts: the periodic check (`Alerter::tick`, once per cluster) fires what `detect` finds
//! established and is not firing yet, and resolves what is firing and no longer found. Each
//! change is announced once: notifications to the tenant's and/or fleet admins, and the
//! `alert.firing` / `alert.resolved` webhooks.
pub mod detect;

use crate::notifications::{self, webhooks, Notice};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz;
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Result};
use app::alerts::{Alert, AlertRule, AlertRuleForm, AlertsOverview, METRICS, SEVERITIES};
use app::error::AppError;
use app::notifications::NotificationKind;
use app::seam::{Alerts, RequestCtx};
use async_trait::async_trait;
use detect::Finding;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// What a tick did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tick {
    pub fired: usize,
    pub resolved: usize,
}

pub struct Alerter {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    /// For host capacity headroom: vCPUs a host may allocate per core.
    pub vcpu_overcommit: f64,
}

fn link(subject_kind: &str, subject: Uuid, host: Option<Uuid>) -> String {
    match (subject_kind, host) {
        ("vm", Some(h)) => format!("/vms/{h}/{subject}"),
        ("host", _) => format!("/hosts/{subject}"),
        _ => "/alerts".into(),
    }
}

/// Tells the fleet admins and/or the tenant's admins, and the webhooks.
#[allow(clippy::too_many_arguments)]
async fn announce(
    tx: &mut Tx,
    firing: bool,
    id: Uuid,
    title: &str,
    detail: &str,
    severity: &str,
    path: String,
    fleet: bool,
    tenant_admins: Option<Uuid>,
    tenant: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<()> {
    let recipients: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE $1 AND fleet_admin
         UNION SELECT user_id FROM memberships WHERE tenant_id = $2 AND role = 'tenant_admin'
         ORDER BY 1",
    )
    .bind(fleet)
    .bind(tenant_admins)
    .fetch_all(&mut **tx)
    .await?;
    let heading = if firing {
        format!("[{severity}] {title}")
    } else {
        format!("Resolved: {title}")
    };
    for user in recipients {
        notifications::send(
            tx,
            Notice {
                user,
                tenant: tenant_admins,
                kind: NotificationKind::Alert,
                title: heading.clone(),
                body: detail.to_string(),
                link: path.clone(),
            },
            now,
        )
        .await?;
    }
    webhooks::publish(
        tx,
        tenant,
        if firing { "alert.firing" } else { "alert.resolved" },
        json!({ "alert_id": id, "title": title, "detail": detail, "severity": severity, "path": path }),
        now,
    )
    .await
}

#[derive(sqlx::FromRow)]
struct Firing {
    id: Uuid,
    kind: String,
    cause: String,
    subject: Uuid,
    subject_kind: String,
    host_id: Option<Uuid>,
    tenant_id: Option<Uuid>,
    rule_tenant: Option<Uuid>,
    rule_fleet: bool,
    severity: String,
    title: String,
}

impl Alerter {
    pub async fn tick(&self) -> Result<Tick> {
        let now = self.clock.now();
        let mut out = Tick::default();
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        if !crate::platform::cluster::once(&mut tx, "alerts").await? {
            return Ok(out);
        }
        let mut found: Vec<Finding> = detect::thresholds(&mut tx, now).await?;
        found.extend(detect::headroom(&mut tx, now, self.vcpu_overcommit).await?);
        found.extend(detect::faults(&mut tx, now).await?);
        found.extend(detect::anomalies(&mut tx, now).await?);
        let present: HashSet<(String, String, Uuid)> = found
            .iter()
            .map(|f| (f.kind.to_string(), f.cause.clone(), f.subject))
            .collect();
        for f in found.iter().filter(|f| f.established) {
            let id: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO alerts (kind, cause, rule_id, subject, subject_kind, subject_name, host_id, tenant_id,
                                     severity, title, detail, value, started_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (kind, cause, subject) WHERE state = 'firing' DO NOTHING RETURNING id",
            )
            .bind(f.kind)
            .bind(&f.cause)
            .bind(f.rule_id)
            .bind(f.subject)
            .bind(f.subject_kind)
            .bind(&f.subject_name)
            .bind(f.host_id)
            .bind(f.tenant_id)
            .bind(&f.severity)
            .bind(&f.title)
            .bind(&f.detail)
            .bind(f.value)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = id {
                out.fired += 1;
                announce(
                    &mut tx,
                    true,
                    id,
                    &f.title,
                    &f.detail,
                    &f.severity,
                    link(f.subject_kind, f.subject, f.host_id),
                    f.fleet,
                    f.tenant_admins,
                    f.tenant_id,
                    now,
                )
                .await?;
            }
        }
        let firing: Vec<Firing> = sqlx::query_as(
            "SELECT a.id, a.kind, a.cause, a.subject, a.subject_kind, a.host_id, a.tenant_id,
                    r.tenant_id AS rule_tenant, (a.kind = 'fault' OR (a.kind = 'threshold' AND r.tenant_id IS NULL)) AS rule_fleet,
                    a.severity, a.title
             FROM alerts a LEFT JOIN alert_rules r ON r.id = a.rule_id WHERE a.state = 'firing'",
        )
        .fetch_all(&mut *tx)
        .await?;
        for a in firing {
            if present.contains(&(a.kind.clone(), a.cause.clone(), a.subject)) {
                continue;
            }
            sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1")
                .bind(a.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            out.resolved += 1;
            let tenant_admins = match a.kind.as_str() {
                "threshold" => a.rule_tenant,
                _ => a.tenant_id,
            };
            announce(
                &mut tx,
                false,
                a.id,
                &a.title,
                "",
                &a.severity,
                link(&a.subject_kind, a.subject, a.host_id),
                a.rule_fleet,
                tenant_admins,
                a.tenant_id,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Checks every `every` until the process ends.
    pub fn spawn(self: Arc<Self>, every: std::time::Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match self.tick().await {
                    Ok(t) if t != Tick::default() => tracing::info!(?t, "alert check"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "alert check"),
                }
            }
        });
    }
}

pub struct AlertsBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
}

#[derive(sqlx::FromRow)]
struct AlertRow {
    id: Uuid,
    kind: String,
    severity: String,
    title: String,
    detail: String,
    subject_kind: String,
    subject: Uuid,
    subject_name: String,
    host_id: Option<Uuid>,
    tenant_name: Option<String>,
    state: String,
    started_at: OffsetDateTime,
    resolved_at: Option<OffsetDateTime>,
}

impl From<AlertRow> for Alert {
    fn from(r: AlertRow) -> Self {
        Alert {
            id: r.id,
            kind: r.kind,
            severity: r.severity,
            title: r.title,
            detail: r.detail,
            subject_kind: r.subject_kind,
            subject: r.subject,
            subject_name: r.subject_name,
            host_id: r.host_id,
            tenant_name: r.tenant_name,
            state: r.state,
            started_at: r.started_at,
            resolved_at: r.resolved_at,
        }
    }
}

const ALERTS: &str =
    "SELECT a.id, a.kind, a.severity, a.title, a.detail, a.subject_kind, a.subject,
        a.subject_name, a.host_id, t.name AS tenant_name, a.state, a.started_at, a.resolved_at
    FROM alerts a LEFT JOIN tenants t ON t.id = a.tenant_id";

#[async_trait]
impl Alerts for AlertsBackend {
    async fn overview(&self, req: &RequestCtx) -> Result<AlertsOverview, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenants: Vec<Uuid> = actor.administered_tenants().map(|m| m.tenant_id).collect();
            if !actor.fleet_admin && tenants.is_empty() {
                return Err(AppError::Forbidden.into());
            }
            let all = actor.fleet_admin;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let mut scopes: Vec<(String, String)> = Vec::new();
            let names = crate::accounts::tenants::choosable(&mut tx, all, &tenants).await?;
            if all {
                scopes.push(("fleet".into(), "Fleet-wide".into()));
            }
            scopes.extend(names.into_iter().map(|(id, n)| (id.to_string(), n)));
            let rules: Vec<(Uuid, Option<String>, String, String, String, bool, f64, i32, String)> = sqlx::query_as(
                "SELECT r.id, t.name, r.name, r.subject, r.metric, r.above, r.threshold, r.for_minutes, r.severity
                 FROM alert_rules r LEFT JOIN tenants t ON t.id = r.tenant_id
                 WHERE $1 OR r.tenant_id = ANY($2) ORDER BY t.name NULLS FIRST, r.name",
            )
            .bind(all)
            .bind(&tenants)
            .fetch_all(&mut *tx)
            .await?;
            let alerts: Vec<AlertRow> = sqlx::query_as(&format!(
                "{ALERTS} WHERE $1 OR a.tenant_id = ANY($2)
                 ORDER BY a.state = 'resolved', a.started_at DESC LIMIT 200"
            ))
            .bind(all)
            .bind(&tenants)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            Ok(AlertsOverview {
                scopes,
                rules: rules
                    .into_iter()
                    .map(|(id, scope, name, subject, metric, above, threshold, for_minutes, severity)| AlertRule {
                        id,
                        scope_name: scope.unwrap_or_else(|| "Fleet-wide".into()),
                        name,
                        subject,
                        metric,
                        above,
                        threshold,
                        for_minutes,
                        severity,
                    })
                    .collect(),
                alerts: alerts.into_iter().map(Alert::from).collect(),
            })
        })
        .await
    }

    async fn for_vm(&self, req: &RequestCtx, host: Uuid, vm: Uuid) -> Result<Vec<Alert>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let facts: Option<(Option<Uuid>, Option<Uuid>, bool)> = sqlx::query_as(
                "SELECT d.tenant_id, coalesce(v.owner_id, d.owner_id), d.managed FROM domains d
                 LEFT JOIN vms v ON v.uuid = d.uuid WHERE d.host_id = $1 AND d.uuid = $2",
            )
            .bind(host)
            .bind(vm)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((tenant, owner, managed)) = facts else {
                return Err(AppError::NotFound("VM".into()).into());
            };
            authz::check_vm(
                actor,
                &authz::VmFacts {
                    managed,
                    tenant,
                    owner,
                },
                authz::Access::See,
            )?;
            let rows: Vec<AlertRow> = sqlx::query_as(&format!(
                "{ALERTS} WHERE a.subject = $1 AND a.state = 'firing' ORDER BY a.started_at DESC"
            ))
            .bind(vm)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            Ok(rows.into_iter().map(Alert::from).collect())
        })
        .await
    }

    async fn add_rule(&self, req: &RequestCtx, form: AlertRuleForm) -> Result<Uuid, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let tenant = match form.scope.trim() {
                "fleet" => None,
                s => Some(s.parse::<Uuid>().map_err(|_| AppError::field("scope", "Choose whose VMs this rule watches."))?),
            };
            match tenant {
                Some(t) if !authz::administers(actor, t) => return Err(authz::refuse_tenant(actor, t).into()),
                None if !actor.fleet_admin => return Err(AppError::Forbidden.into()),
                _ => {}
            }
            let name = form.name.trim();
            if name.is_empty() || name.chars().count() > 80 {
                return Err(AppError::field("name", "Name the rule (at most 80 characters).").into());
            }
            let subject = form.subject.trim();
            if !matches!(subject, "vm" | "host") {
                return Err(AppError::field("subject", "Choose VMs or hosts.").into());
            }
            if subject == "host" && tenant.is_some() {
                return Err(AppError::field("subject", "Host rules are fleet-wide: choose VMs for a tenant's rule.").into());
            }
            let metric = form.metric.trim();
            if !METRICS.iter().any(|(m, _)| *m == metric) {
                return Err(AppError::field("metric", "Choose a metric.").into());
            }
            if metric == "headroom" && subject != "host" {
                return Err(AppError::field("metric", "Capacity headroom is a host's: choose hosts.").into());
            }
            let above = match form.direction.trim() {
                "above" | "" => true,
                "below" => false,
                _ => return Err(AppError::field("direction", "Choose above or below.").into()),
            };
            let threshold: f64 = match form.threshold.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 && (v <= 100.0 || !matches!(metric, "cpu" | "memory" | "headroom")) => v,
                _ => return Err(AppError::field("threshold", "Enter a number: a percentage from 0 to 100 for CPU, memory and headroom, KiB/s for disk and network.").into()),
            };
            let for_minutes: i32 = match form.for_minutes.trim().parse::<i32>() {
                Ok(v) if (1..=1440).contains(&v) => v,
                _ => return Err(AppError::field("for_minutes", "Enter minutes from 1 to 1440.").into()),
            };
            let severity = form.severity.trim();
            let severity = if severity.is_empty() { "warning" } else { severity };
            if !SEVERITIES.contains(&severity) {
                return Err(AppError::field("severity", "Choose info, warning or critical.").into());
            }
            let scope = match tenant {
                Some(t) if !actor.fleet_admin => Scope::tenant(t),
                _ => Scope::fleet(),
            };
            let mut tx = db::begin(&self.pool, scope).await?;
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO alert_rules (tenant_id, name, subject, metric, above, threshold, for_minutes, severity,
                                          created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(tenant)
            .bind(name)
            .bind(subject)
            .bind(metric)
            .bind(above)
            .bind(threshold)
            .bind(for_minutes)
            .bind(severity)
            .bind(actor.user_id)
            .bind(self.clock.now())
            .fetch_one(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("alert_rule.create", "alert_rule", id).tenant_opt(tenant).after(json!({
                    "name": name, "subject": subject, "metric": metric, "above": above,
                    "threshold": threshold, "for_minutes": for_minutes, "severity": severity,
                })),
            )
            .await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    async fn remove_rule(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let row: Option<(Option<Uuid>, String)> =
                sqlx::query_as("SELECT tenant_id, name FROM alert_rules WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let allowed = match &row {
                Some((Some(t), _)) => authz::administers(actor, *t),
                Some((None, _)) => actor.fleet_admin,
                None => false,
            };
            let Some((tenant, name)) = row.filter(|_| allowed) else {
                return Err(AppError::NotFound("Alert rule".into()).into());
            };
            // Its alerts go with it (they no longer have a cause).
            sqlx::query("DELETE FROM alert_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("alert_rule.remove", "alert_rule", id)
                    .tenant_opt(tenant)
                    .before(json!({ "name": name })),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
