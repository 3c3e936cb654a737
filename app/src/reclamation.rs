//! Reclamation: rules that find idle, oversized, long powered-off and orphaned VMs (per tenant, with
//! fleet defaults), a dry-run preview with the evidence, proposals the owner answers (keep
//! with a reason, or accept), the tenant's action after the response window, and a report of
//! what was reclaimed.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The rule kinds, stored in `reclamation_rules.kind`, with how the page names them.
pub const RULE_KINDS: [(&str, &str); 4] = [
    ("idle", "Idle: CPU, disk and network below thresholds"),
    (
        "oversized",
        "Oversized: CPU and memory peaks well below the size",
    ),
    ("powered_off", "Powered off for days"),
    ("orphaned", "Orphaned: the owner left the tenant"),
];

/// What happens when the owner does not answer in time (or accepts).
/// Oversized VMs are shrunk (only); the other kinds stop or delete.
pub const ACTIONS: [(&str, &str); 3] = [
    ("stop", "Stop the VM"),
    ("delete", "Delete the VM"),
    ("shrink", "Shrink it at its next stop (oversized)"),
];

/// How a proposal's action reads in a sentence: "stopped", "deleted", "shrunk".
pub fn action_done(action: &str) -> &'static str {
    match action {
        "delete" => "deleted",
        "shrink" => "shrunk",
        _ => "stopped",
    }
}

pub fn kind_label(kind: &str) -> &'static str {
    RULE_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, l)| *l)
        .unwrap_or("Unknown rule")
}

/// A rule as the form sends it (text fields, checked on the server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleForm {
    /// A tenant's UUID, or "fleet" for the fleet default.
    pub scope: String,
    pub kind: String,
    /// Over how many days (idle) or for how many days (powered off).
    pub days: String,
    /// Idle: CPU below this percent of the VM's vCPUs...; oversized: its 95th percentile.
    pub cpu_pct: String,
    /// Oversized: the 95th percentile of memory in use below this percent of the VM's memory.
    #[serde(default)]
    pub mem_pct: String,
    /// ...disk reads + writes below this many KiB/s...
    pub io_kbps: String,
    /// ...network in + out below this many KiB/s...
    pub net_kbps: String,
    /// ...for at least this share of each day's hours.
    pub share_pct: String,
    pub action: String,
    /// Days the owner has to answer a proposal.
    pub response_days: String,
    /// "on" when enabled (a checkbox).
    pub enabled: Option<String>,
}

/// A saved rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: Uuid,
    /// `None`: the fleet default.
    pub tenant_id: Option<Uuid>,
    pub scope_name: String,
    pub kind: String,
    pub enabled: bool,
    pub days: i32,
    pub cpu_pct: f32,
    pub mem_pct: f32,
    pub io_kbps: f32,
    pub net_kbps: f32,
    pub share_pct: i32,
    pub action: String,
    pub response_days: i32,
}

/// One figure that matched, e.g. ("CPU, 14-day mean", "1.2 %").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figure {
    pub label: String,
    pub value: String,
}

/// A VM a rule matches now, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub vm: Uuid,
    pub host_id: Option<Uuid>,
    pub tenant_name: String,
    pub name: String,
    pub owner: Option<String>,
    pub figures: Vec<Figure>,
    /// Daily mean CPU (% of vCPUs), oldest first: the sparkline.
    pub daily_cpu: Vec<f32>,
}

/// A proposal to reclaim a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: Uuid,
    pub vm: Uuid,
    pub host_id: Option<Uuid>,
    pub vm_name: String,
    pub tenant_name: String,
    pub owner: Option<String>,
    pub kind: String,
    pub action: String,
    pub figures: Vec<Figure>,
    pub daily_cpu: Vec<f32>,
    /// open, kept, waiting (a shrink waiting for the VM's next stop), done, dropped.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub respond_by: OffsetDateTime,
    pub reason: Option<String>,
}

/// Reclaimed in one month of one tenant (proposals carried out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReclaimedMonth {
    /// YYYY-MM.
    pub month: String,
    pub tenant_name: String,
    pub vms: i64,
    /// Freed: a stop frees vCPUs and memory, a shrink the difference, a delete everything.
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// What the freed allocation costs a month (730 hours) at the rate card of the day it was
    /// freed; `None` without a rate card.
    pub monthly_cost: Option<f64>,
    pub currency: Option<String>,
}

/// A dry run: the rule as understood (blanks filled with defaults), and what it matches now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    pub rule: RuleForm,
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReclamationOverview {
    /// Where the actor may set rules: tenants they administer, and "fleet" for fleet admins.
    pub scopes: Vec<(String, String)>,
    pub rules: Vec<Rule>,
    /// Open and recent proposals of those tenants.
    pub proposals: Vec<Proposal>,
    pub report: Vec<ReclaimedMonth>,
}

#[server(prefix = "/api", endpoint = "reclamation")]
pub async fn reclamation() -> Result<ReclamationOverview, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.reclamation.overview(&req).await)
}

/// The dry run: which VMs the rule would propose now, with the evidence. Saves nothing.
// One argument per form field, so that a plain form posts it without JavaScript.
#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "preview_reclamation_rule")]
pub async fn preview_reclamation_rule(
    #[server(default)] scope: String,
    #[server(default)] kind: String,
    #[server(default)] days: String,
    #[server(default)] cpu_pct: String,
    #[server(default)] mem_pct: String,
    #[server(default)] io_kbps: String,
    #[server(default)] net_kbps: String,
    #[server(default)] share_pct: String,
    #[server(default)] action: String,
    #[server(default)] response_days: String,
    #[server(default)] enabled: Option<String>,
) -> Result<Preview, AppError> {
    let req = crate::seam::request()?;
    let form = RuleForm {
        scope,
        kind,
        days,
        cpu_pct,
        mem_pct,
        io_kbps,
        net_kbps,
        share_pct,
        action,
        response_days,
        enabled,
    };
    crate::seam::reply(
        crate::seam::backend()?
            .reclamation
            .preview(&req, form)
            .await,
    )
}

#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "save_reclamation_rule")]
pub async fn save_reclamation_rule(
    #[server(default)] scope: String,
    #[server(default)] kind: String,
    #[server(default)] days: String,
    #[server(default)] cpu_pct: String,
    #[server(default)] mem_pct: String,
    #[server(default)] io_kbps: String,
    #[server(default)] net_kbps: String,
    #[server(default)] share_pct: String,
    #[server(default)] action: String,
    #[server(default)] response_days: String,
    #[server(default)] enabled: Option<String>,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    let form = RuleForm {
        scope,
        kind,
        days,
        cpu_pct,
        mem_pct,
        io_kbps,
        net_kbps,
        share_pct,
        action,
        response_days,
        enabled,
    };
    crate::seam::reply(crate::seam::backend()?.reclamation.save(&req, form).await)
}

/// The signed-in user's proposals (their VMs).
#[server(prefix = "/api", endpoint = "my_reclamation_proposals")]
pub async fn my_reclamation_proposals() -> Result<Vec<Proposal>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.reclamation.mine(&req).await)
}

/// The owner's answer: "keep" (with a reason: the rule leaves the VM alone for a while) or
/// "accept" (the action happens now).
#[server(prefix = "/api", endpoint = "answer_reclamation_proposal")]
pub async fn answer_reclamation_proposal(
    id: Uuid,
    answer: String,
    #[server(default)] reason: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .reclamation
            .answer(&req, id, &answer, &reason)
            .await,
    )
}
