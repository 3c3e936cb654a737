//! Approval policy: auto-approval thresholds and ordered approval levels, each satisfied by
//! ANY or ALL of its approvers.
use crate::platform::db::Tx;
use crate::platform::error::Result;
use app::account::Actor;
use app::error::AppError;
use app::provisioning::{ApprovalLevel, ApprovalPolicy};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Level {
    pub level: i32,
    pub all: bool,
    /// Empty: any approver or tenant admin of the tenant.
    pub approvers: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub auto_max_vcpus: i32,
    pub auto_max_memory_mib: i64,
    pub auto_max_count: i32,
    pub auto_max_lease_days: i32,
    pub auto_template_ids: Vec<Uuid>,
    pub expire_days: i32,
    pub levels: Vec<Level>,
}

/// What a request asks for, as the policy sees it.
pub struct Ask {
    pub template: Uuid,
    pub vcpus: i32,
    pub memory_mib: i64,
    pub count: i32,
    pub lease_days: i32,
}

/// Tenants' policies, each read once, for lists that span tenants.
#[derive(Default)]
pub struct Policies(std::collections::HashMap<Uuid, Policy>);

impl Policies {
    pub async fn get(&mut self, tx: &mut Tx, tenant: Uuid) -> Result<&Policy, AppError> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.0.entry(tenant) {
            e.insert(Policy::load(tx, tenant).await?);
        }
        Ok(&self.0[&tenant])
    }

    /// The level (of a request in `tenant` at `level`) that `actor` decides, if they do.
    pub async fn decides(
        &mut self,
        tx: &mut Tx,
        actor: &Actor,
        tenant: Uuid,
        level: Option<i32>,
    ) -> Result<Option<i32>, AppError> {
        let policy = self.get(tx, tenant).await?;
        Ok(level
            .and_then(|l| policy.level(l))
            .filter(|l| l.eligible(actor, tenant))
            .map(|l| l.level))
    }
}

impl Policy {
    pub async fn load(tx: &mut Tx, tenant: Uuid) -> Result<Policy> {
        // The policy and its levels in one round trip: a row per level, the policy's columns
        // repeated (NULL without a policy row, no level columns without levels).
        #[derive(sqlx::FromRow)]
        struct Row {
            auto_max_vcpus: Option<i32>,
            auto_max_memory_mib: Option<i64>,
            auto_max_count: Option<i32>,
            auto_max_lease_days: Option<i32>,
            auto_template_ids: Option<Vec<Uuid>>,
            expire_days: Option<i32>,
            level: Option<i32>,
            mode: Option<String>,
            approvers: Option<Vec<Uuid>>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.auto_max_vcpus, p.auto_max_memory_mib, p.auto_max_count, p.auto_max_lease_days,
                    p.auto_template_ids, p.expire_days, l.level, l.mode, l.approvers
             FROM (SELECT $1::uuid AS tenant_id) k
             LEFT JOIN approval_policies p ON p.tenant_id = k.tenant_id
             LEFT JOIN approval_levels l ON l.tenant_id = k.tenant_id
             ORDER BY l.level",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
        let first = rows.first();
        // A tenant without a policy row auto-approves nothing.
        let v = first.and_then(|r| r.auto_max_vcpus).unwrap_or(0);
        let m = first.and_then(|r| r.auto_max_memory_mib).unwrap_or(0);
        let c = first.and_then(|r| r.auto_max_count).unwrap_or(0);
        let l = first.and_then(|r| r.auto_max_lease_days).unwrap_or(0);
        let t = first
            .and_then(|r| r.auto_template_ids.clone())
            .unwrap_or_default();
        let e = first.and_then(|r| r.expire_days).unwrap_or(7);
        let mut levels: Vec<Level> = rows
            .into_iter()
            .filter_map(|r| {
                Some(Level {
                    level: r.level?,
                    all: r.mode? == "all",
                    approvers: r.approvers.unwrap_or_default(),
                })
            })
            .collect();
        if levels.is_empty() {
            levels.push(Level {
                level: 1,
                all: false,
                approvers: Vec::new(),
            });
        }
        Ok(Policy {
            auto_max_vcpus: v,
            auto_max_memory_mib: m,
            auto_max_count: c,
            auto_max_lease_days: l,
            auto_template_ids: t,
            expire_days: e,
            levels,
        })
    }

    /// Within every auto-approval threshold (sizes are per VM).
    pub fn auto_approves(&self, ask: &Ask) -> bool {
        ask.vcpus <= self.auto_max_vcpus
            && ask.memory_mib <= self.auto_max_memory_mib
            && ask.count <= self.auto_max_count
            && ask.lease_days <= self.auto_max_lease_days
            && (self.auto_template_ids.is_empty() || self.auto_template_ids.contains(&ask.template))
    }

    pub fn level(&self, n: i32) -> Option<&Level> {
        self.levels.iter().find(|l| l.level == n)
    }

    pub fn next_level(&self, after: i32) -> Option<&Level> {
        self.levels.iter().find(|l| l.level > after)
    }

    pub fn first_level(&self) -> i32 {
        self.levels.first().map(|l| l.level).unwrap_or(1)
    }
}

impl Level {
    /// May `actor` decide at this level of a request in `tenant`?
    pub fn eligible(&self, actor: &Actor, tenant: Uuid) -> bool {
        if self.approvers.is_empty() {
            crate::platform::authz::decides_in(actor, tenant)
        } else {
            self.approvers.contains(&actor.user_id)
                && crate::platform::authz::member_of(actor, tenant)
        }
    }

    /// Whether these approvals (user ids) satisfy the level.
    pub fn satisfied(&self, approved_by: &[Uuid]) -> bool {
        if self.all && !self.approvers.is_empty() {
            self.approvers.iter().all(|a| approved_by.contains(a))
        } else {
            !approved_by.is_empty()
        }
    }
}

/// The policy as the settings page shows it, with approvers as e-mails.
pub async fn describe(tx: &mut Tx, tenant: Uuid) -> Result<ApprovalPolicy> {
    let p = Policy::load(tx, tenant).await?;
    let mut levels = Vec::new();
    for l in &p.levels {
        let emails: Vec<String> =
            sqlx::query_scalar("SELECT email FROM users WHERE id = ANY($1) ORDER BY lower(email)")
                .bind(&l.approvers)
                .fetch_all(&mut **tx)
                .await?;
        levels.push(ApprovalLevel {
            level: l.level,
            mode: if l.all { "all" } else { "any" }.into(),
            approvers: emails,
        });
    }
    Ok(ApprovalPolicy {
        auto_max_vcpus: p.auto_max_vcpus,
        auto_max_memory_mib: p.auto_max_memory_mib,
        auto_max_count: p.auto_max_count,
        auto_max_lease_days: p.auto_max_lease_days,
        auto_template_names: sqlx::query_scalar(
            "SELECT name FROM templates WHERE id = ANY($1) ORDER BY lower(name)",
        )
        .bind(&p.auto_template_ids)
        .fetch_all(&mut **tx)
        .await?,
        auto_template_ids: p.auto_template_ids,
        expire_days: p.expire_days,
        levels,
        eligible_approvers: sqlx::query_scalar(
            "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.tenant_id = $1 AND m.role IN ('approver', 'tenant_admin') AND u.disabled_at IS NULL
             ORDER BY lower(u.email)",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?,
    })
}

/// Levels as the policy form's rows send them: mode `any` or `all` (empty: the row is
/// dropped) and the approvers ticked.
pub fn level_rows(
    rows: &[app::provisioning::LevelForm],
) -> Result<Vec<(bool, Vec<String>)>, AppError> {
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let all = match row.mode.trim() {
            "" => continue,
            "any" => false,
            "all" => true,
            _ => {
                return Err(AppError::field(
                    "levels",
                    format!("Level {}: choose \"any\" or \"all\".", i + 1),
                ))
            }
        };
        let mut emails: Vec<String> = row
            .approvers
            .iter()
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        emails.dedup();
        out.push((all, emails));
    }
    if out.len() > 10 {
        return Err(AppError::field("levels", "At most 10 levels."));
    }
    Ok(out)
}

/// Levels as typed: one per line, `any: a@x, b@y` or `all: …`; an empty list of e-mails
/// means any approver of the tenant.
pub fn parse_levels(raw: &str) -> Result<Vec<(bool, Vec<String>)>, AppError> {
    let mut out = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (mode, rest) = line.split_once(':').unwrap_or((line, ""));
        let all = match mode.trim().to_lowercase().as_str() {
            "any" => false,
            "all" => true,
            _ => {
                return Err(AppError::field(
                    "levels",
                    format!(
                        "Line {}: start with `any:` or `all:`, then the approvers' e-mails.",
                        i + 1
                    ),
                ))
            }
        };
        let emails: Vec<String> = rest
            .split(',')
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        out.push((all, emails));
    }
    if out.len() > 10 {
        return Err(AppError::field("levels", "At most 10 levels."));
    }
    Ok(out)
}
