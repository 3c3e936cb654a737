//! Templates and the catalog: the backend of the `Catalog` seam.
pub mod cloud_init;
pub mod images;
use crate::hypervisor::storage;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::error::AppError;
use app::images::RegisterImageForm;
use app::provisioning::{Offer, Size, SizeOffer, Template, TemplateForm};
use app::seam::{Catalog, RequestCtx};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub struct CatalogBackend {
    pub pool: PgPool,
    pub images: Arc<crate::catalog::images::ImagesBackend>,
}

/// The image a template is saved with.
struct ChosenImage {
    id: Uuid,
    login_user: Option<String>,
}

/// The template form's shortcut fields carry the `image_` prefix.
fn shortcut_fields(e: AppError) -> AppError {
    match e {
        AppError::Invalid(fields) => AppError::Invalid(
            fields
                .into_iter()
                .map(|mut f| {
                    f.field = match f.field.as_str() {
                        "host" => "image_host",
                        "pool" => "image_pool",
                        "kernel" => "image_kernel",
                        "initrd" => "image_initrd",
                        "login_user" => "login_user",
                        _ => "image_volume",
                    }
                    .to_string();
                    f
                })
                .collect(),
        ),
        other => other,
    }
}

impl CatalogBackend {
    /// The image the form chooses: by id from the library, or (the shortcut scripts use) a
    /// volume named by host, pool and name, registered on the way. None keeps the current one.
    async fn template_image(
        &self,
        req: &RequestCtx,
        form: &TemplateForm,
    ) -> Result<Option<ChosenImage>> {
        let shortcut = form.image_host.is_some()
            || !form.image_pool.trim().is_empty()
            || !form.image_volume.trim().is_empty();
        let id = match (form.image_id, shortcut) {
            (Some(id), _) => Some(id),
            (None, true) => {
                let Some(host) = form.image_host else {
                    return Err(AppError::field(
                        "image_host",
                        "Choose the host that holds the base image.",
                    )
                    .into());
                };
                let current: Option<Uuid> = match form.id {
                    Some(t) => {
                        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
                        sqlx::query_scalar("SELECT image_id FROM templates WHERE id = $1")
                            .bind(t)
                            .fetch_optional(&mut *tx)
                            .await?
                            .flatten()
                    }
                    None => None,
                };
                let mut reg = RegisterImageForm {
                    name: form.image_volume.trim().to_string(),
                    host: Some(host),
                    pool: form.image_pool.clone(),
                    volume: form.image_volume.clone(),
                    kernel: form.image_kernel.clone(),
                    initrd: form.image_initrd.clone(),
                    login_user: form.login_user.clone(),
                };
                let first = self.images.register_volume(req, &reg, current).await;
                let id = match first {
                    Err(e) if e.field_message("name").is_some() => {
                        // Another volume of that name is an image already: name this one apart.
                        reg.name = format!(
                            "{} ({})",
                            reg.name,
                            &Uuid::new_v4().simple().to_string()[..8]
                        );
                        self.images.register_volume(req, &reg, current).await
                    }
                    other => other,
                }
                .map_err(shortcut_fields)?;
                Some(id)
            }
            (None, false) => None,
        };
        let Some(id) = id else {
            return match form.id {
                None => Err(AppError::field(
                    "image_id",
                    "Choose the template's base image from the image library.",
                )
                .into()),
                Some(_) => Ok(None),
            };
        };
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let found: Option<(String, Option<String>, bool)> = sqlx::query_as(
            "SELECT format, login_user, EXISTS (SELECT 1 FROM image_copies c WHERE c.image_id = i.id AND c.state = 'ready')
             FROM images i WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match found {
            None => Err(AppError::field("image_id", "Choose an image of the library.").into()),
            Some((_, _, false)) => Err(AppError::field(
                "image_id",
                "This image has no finished copy on any host yet.",
            )
            .into()),
            Some((format, ..)) if format != "qcow2" => Err(AppError::field(
                "image_id",
                "This image is raw: templates need qcow2 (VMs are linked clones of it).",
            )
            .into()),
            Some((_, login_user, true)) => Ok(Some(ChosenImage { id, login_user })),
        }
    }
}

pub const MAX_VCPUS: i32 = 128;
pub const MAX_MEMORY_MIB: i64 = 1024 * 1024;
pub const MAX_DISK_GIB: i64 = 16 * 1024;

/// Sizes as typed in the template form: one per line, `name vcpus memory_gib disk_gib`.
pub fn parse_sizes(raw: &str) -> Result<Vec<Size>, AppError> {
    let bad = |line: usize, why: &str| {
        AppError::field(
            "sizes",
            format!("Line {line}: {why} Write one size per line as `name vCPUs memory-GiB disk-GiB`, e.g. `small 1 2 20`."),
        )
    };
    let mut sizes: Vec<Size> = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|p| !p.is_empty())
            .collect();
        let [name, vcpus, memory, disk] = parts[..] else {
            return Err(bad(i + 1, "expected four values."));
        };
        let name = name.to_lowercase();
        if name.len() > 20
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                i + 1,
                "a size name has up to 20 letters, digits, '-' or '_'.",
            ));
        }
        let vcpus: i32 = vcpus
            .parse()
            .ok()
            .filter(|v| (1..=MAX_VCPUS).contains(v))
            .ok_or_else(|| bad(i + 1, "vCPUs must be a whole number from 1 to 128."))?;
        let memory_mib = memory
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m >= 0.25 && *m <= 1024.0)
            .map(|m| (m * 1024.0).round() as i64)
            .ok_or_else(|| bad(i + 1, "memory must be from 0.25 to 1024 GiB."))?;
        let disk_gib: i64 = disk
            .parse()
            .ok()
            .filter(|d| (1..=MAX_DISK_GIB).contains(d))
            .ok_or_else(|| bad(i + 1, "disk must be a whole number of GiB from 1 to 16384."))?;
        if sizes.iter().any(|s| s.name == name) {
            return Err(bad(i + 1, "each size needs its own name."));
        }
        sizes.push(Size {
            name,
            vcpus,
            memory_mib,
            disk_gib,
        });
    }
    if sizes.is_empty() {
        return Err(AppError::field(
            "sizes",
            "Add at least one size, e.g. `small 1 2 20`.",
        ));
    }
    if sizes.len() > 20 {
        return Err(AppError::field("sizes", "At most 20 sizes."));
    }
    Ok(sizes)
}

/// The sizes as the form shows them again.
pub fn format_sizes(sizes: &[Size]) -> String {
    sizes
        .iter()
        .map(|s| {
            let mem = s.memory_mib as f64 / 1024.0;
            format!("{} {} {} {}", s.name, s.vcpus, mem, s.disk_gib)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn parse_days(raw: &str, field: &str) -> Result<i32, AppError> {
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|d| (1..=3650).contains(d))
        .ok_or_else(|| AppError::field(field, "Enter a whole number of days from 1 to 3650."))
}

pub fn parse_text(raw: &str, field: &str, max: usize, required: bool) -> Result<String, AppError> {
    let s = raw.trim();
    if required && s.is_empty() {
        return Err(AppError::field(field, "This field is required."));
    }
    if s.chars().count() > max || s.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        return Err(AppError::field(
            field,
            format!("Use at most {max} characters, without control characters."),
        ));
    }
    Ok(s.to_string())
}

#[derive(sqlx::FromRow)]
struct TemplateRow {
    id: Uuid,
    name: String,
    description: String,
    os: String,
    sizes: serde_json::Value,
    default_lease_days: i32,
    max_lease_days: i32,
    published: bool,
    all_tenants: bool,
    tenant_ids: Vec<Uuid>,
    tenant_names: Vec<String>,
    images: serde_json::Value,
    image_id: Option<Uuid>,
    image_name: Option<String>,
    networks: Vec<String>,
    hidden: bool,
    login_user: Option<String>,
    user_data: String,
    allow_user_data: bool,
}

impl From<TemplateRow> for Template {
    fn from(r: TemplateRow) -> Self {
        Template {
            id: r.id,
            name: r.name,
            description: r.description,
            os: r.os,
            sizes: serde_json::from_value(r.sizes).unwrap_or_default(),
            default_lease_days: r.default_lease_days,
            max_lease_days: r.max_lease_days,
            published: r.published,
            all_tenants: r.all_tenants,
            tenant_ids: r.tenant_ids,
            tenant_names: r.tenant_names,
            images: serde_json::from_value(r.images).unwrap_or_default(),
            image_id: r.image_id,
            image_name: r.image_name,
            networks: r.networks,
            hidden: r.hidden,
            offer: None,
            login_user: r.login_user,
            user_data: r.user_data,
            allow_user_data: r.allow_user_data,
        }
    }
}

/// `$1` is the viewing tenant (for `hidden`), or NULL.
const TEMPLATE_SELECT: &str = "
    SELECT t.id, t.name, t.description, t.os, t.sizes, t.default_lease_days, t.max_lease_days,
           t.published, t.all_tenants, t.tenant_ids, t.login_user, t.user_data, t.allow_user_data,
           t.image_id, (SELECT im.name FROM images im WHERE im.id = t.image_id) AS image_name, t.networks,
           coalesce((SELECT array_agg(tn.name ORDER BY tn.name) FROM tenants tn WHERE tn.id = ANY(t.tenant_ids)), '{}') AS tenant_names,
           coalesce((SELECT jsonb_agg(jsonb_build_object('host_id', i.host_id, 'host_name', h.name, 'pool', i.pool, 'volume', i.volume, 'kernel', i.kernel, 'initrd', i.initrd) ORDER BY h.name)
                     FROM template_images i JOIN hosts h ON h.id = i.host_id WHERE i.template_id = t.id), '[]') AS images,
           EXISTS (SELECT 1 FROM template_hidden x WHERE x.template_id = t.id AND x.tenant_id = $1) AS hidden
    FROM templates t";

/// A template as one tenant may use it: published, offered to the tenant, not hidden there.
pub async fn usable_template(tx: &mut db::Tx, tenant: Uuid, template: Uuid) -> Result<Template> {
    let row: Option<TemplateRow> = sqlx::query_as(&format!(
        "{TEMPLATE_SELECT} WHERE t.id = $2 AND t.published AND (t.all_tenants OR $1 = ANY(t.tenant_ids))"
    ))
    .bind(tenant)
    .bind(template)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(r) if !r.hidden => Ok(r.into()),
        _ => Err(AppError::field("template_id", "Choose a template from your catalog.").into()),
    }
}

#[async_trait]
impl Catalog for CatalogBackend {
    async fn templates(&self, req: &RequestCtx) -> Result<Vec<Template>, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let rows: Vec<TemplateRow> =
                sqlx::query_as(&format!("{TEMPLATE_SELECT} ORDER BY lower(t.name)"))
                    .bind(None::<Uuid>)
                    .fetch_all(&mut *tx)
                    .await?;
            Ok(rows.into_iter().map(Template::from).collect())
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn save(&self, req: &RequestCtx, form: TemplateForm) -> Result<Uuid, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let name = parse_text(&form.name, "name", 80, true);
            let description = parse_text(&form.description, "description", 2000, false);
            let os = parse_text(&form.os, "os", 80, true);
            let sizes = parse_sizes(&form.sizes);
            let default_lease = parse_days(&form.default_lease_days, "default_lease_days");
            let max_lease = parse_days(&form.max_lease_days, "max_lease_days");
            let lease_order = match (&default_lease, &max_lease) {
                (Ok(d), Ok(m)) if d > m => Some(AppError::field(
                    "max_lease_days",
                    "The maximum lease must be at least the default lease.",
                )),
                _ => None,
            };
            let guest = parse_guest(&form);
            let networks = parse_networks(&form.networks);
            let (name, description, os, sizes, default_lease, max_lease) =
                match (name, description, os, sizes, default_lease, max_lease) {
                    (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f))
                        if lease_order.is_none() && guest.is_ok() && networks.is_ok() =>
                    {
                        (a, b, c, d, e, f)
                    }
                    (a, b, c, d, e, f) => {
                        return Err(AppError::merge([
                            a.err(),
                            b.err(),
                            c.err(),
                            d.err(),
                            e.err(),
                            f.err(),
                            lease_order,
                            guest.err(),
                            networks.err(),
                        ]).into())
                    }
                };
            let networks = networks?;
            let (login_user, user_data) = guest?;
            let image = self.template_image(req, &form).await?;
            // The image says who logs in; the template may name another user of it.
            let login_user = match (login_user, &image) {
                (Some(u), _) => Some(u),
                (None, Some(i)) => i.login_user.clone(),
                (None, None) => None,
            };
            let allow_user_data = matches!(form.allow_user_data.trim(), "on" | "true");
            if allow_user_data && login_user.is_none() {
                return Err(AppError::field(
                    "allow_user_data",
                    "Requesters' cloud-config needs a login user (an image that takes cloud-init).",
                ).into());
            }
            if login_user.is_none() && !user_data.is_empty() {
                return Err(AppError::field(
                    "user_data",
                    "A cloud-config snippet needs a login user (an image that takes cloud-init).",
                ).into());
            }

            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let (all_tenants, tenant_ids) = {
                let raw = form.tenants.trim();
                if raw == "*" {
                    (true, Vec::new())
                } else {
                    let names: Vec<String> = raw
                        .split(',')
                        .map(|n| n.trim().to_lowercase())
                        .filter(|n| !n.is_empty())
                        .collect();
                    let found: Vec<(Uuid, String)> = sqlx::query_as(
                        "SELECT id, lower(name) FROM tenants WHERE lower(name) = ANY($1)",
                    )
                    .bind(&names)
                    .fetch_all(&mut *tx)
                    .await?;
                    if let Some(missing) = names.iter().find(|n| !found.iter().any(|(_, f)| f == *n)) {
                        return Err(AppError::field(
                            "tenants",
                            format!("There is no tenant named \u{201c}{missing}\u{201d}. Use * for every tenant."),
                        ).into());
                    }
                    (false, found.into_iter().map(|(id, _)| id).collect())
                }
            };
            let sizes_json = serde_json::to_value(&sizes)?;
            // The update names the template as $14; both bind the same thirteen fields.
            let sql = match form.id {
                None => "INSERT INTO templates (name, description, os, sizes, default_lease_days, max_lease_days, all_tenants, tenant_ids, login_user, user_data, allow_user_data, networks, image_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                Some(_) => "UPDATE templates SET name = $1, description = $2, os = $3, sizes = $4, default_lease_days = $5,
                            max_lease_days = $6, all_tenants = $7, tenant_ids = $8, login_user = $9,
                            user_data = $10, allow_user_data = $11, networks = $12,
                            image_id = coalesce($13, image_id), updated_at = now()
                     WHERE id = $14 RETURNING id",
            };
            let mut query = sqlx::query_scalar(sql)
                .bind(&name)
                .bind(&description)
                .bind(&os)
                .bind(&sizes_json)
                .bind(default_lease)
                .bind(max_lease)
                .bind(all_tenants)
                .bind(&tenant_ids)
                .bind(&login_user)
                .bind(&user_data)
                .bind(allow_user_data)
                .bind(&networks)
                .bind(image.as_ref().map(|i| i.id));
            if let Some(id) = form.id {
                query = query.bind(id);
            }
            let id: Uuid = query
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| AppError::NotFound("Template".into()))?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new(
                    if form.id.is_some() {
                        "template.update"
                    } else {
                        "template.create"
                    },
                    "template",
                    id,
                )
                .after(json!({
                    "name": name, "os": os, "sizes": sizes_json, "default_lease_days": default_lease,
                    "max_lease_days": max_lease, "all_tenants": all_tenants, "tenant_ids": tenant_ids,
                    "image": image.as_ref().map(|i| i.id),
                    "login_user": login_user, "user_data": user_data, "allow_user_data": allow_user_data,
                    "networks": networks,
                })),
            )
            .await?;
            tx.commit().await?;
            Ok(id)
    }).await
    }

    async fn set_published(
        &self,
        req: &RequestCtx,
        id: Uuid,
        published: bool,
    ) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let images: Option<i64> = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM template_images i WHERE i.template_id = t.id) FROM templates t WHERE t.id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let images = images.ok_or_else(|| AppError::NotFound("Template".into()))?;
            if published && images == 0 {
                return Err(AppError::Conflict(
                    "Add a base image on at least one host before publishing.".into(),
                ).into());
            }
            sqlx::query("UPDATE templates SET published = $2, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(published)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new(
                    if published {
                        "template.publish"
                    } else {
                        "template.unpublish"
                    },
                    "template",
                    id,
                ),
            )
            .await?;
            Ok(tx.commit().await?)
    }).await
    }

    async fn set_hidden(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        id: Uuid,
        hidden: bool,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            if !crate::platform::authz::administers(actor, tenant_id) {
                return Err(AppError::Forbidden.into());
            }
            let mut tx = db::begin(&self.pool, Scope::tenant(tenant_id)).await?;
            let offered: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM templates WHERE id = $1 AND (all_tenants OR $2 = ANY(tenant_ids)))",
            )
            .bind(id)
            .bind(tenant_id)
            .fetch_one(&mut *tx)
            .await?;
            if !offered {
                return Err(AppError::NotFound("Template".into()).into());
            }
            if hidden {
                sqlx::query("INSERT INTO template_hidden (template_id, tenant_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            } else {
                sqlx::query("DELETE FROM template_hidden WHERE template_id = $1 AND tenant_id = $2")
            }
            .bind(id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new(
                    if hidden {
                        "template.hide"
                    } else {
                        "template.show"
                    },
                    "template",
                    id,
                )
                .tenant(tenant_id),
            )
            .await?;
            Ok(tx.commit().await?)
    }).await
    }

    async fn catalog(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        search: &str,
        include_hidden: bool,
    ) -> Result<Vec<Template>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            if !crate::platform::authz::member_of(actor, tenant_id) && !actor.fleet_admin {
                return Err(AppError::NotFound("Tenant".into()).into());
            }
            let include_hidden =
                include_hidden && crate::platform::authz::administers(actor, tenant_id);
            let pattern = format!("%{}%", crate::platform::list::escape_like(&search.trim().to_lowercase()));
            let mut tx = db::begin(&self.pool, Scope::tenant(tenant_id)).await?;
            let rows: Vec<TemplateRow> = sqlx::query_as(&format!(
                "SELECT * FROM ({TEMPLATE_SELECT}
                   WHERE t.published AND (t.all_tenants OR $1 = ANY(t.tenant_ids))
                     AND (lower(t.name) LIKE $2 OR lower(t.os) LIKE $2 OR lower(t.description) LIKE $2)) x
                 WHERE $3 OR NOT x.hidden ORDER BY lower(x.name)"
            ))
            .bind(tenant_id)
            .bind(pattern)
            .bind(include_hidden)
            .fetch_all(&mut *tx)
            .await?;
            let mut list: Vec<Template> = rows
                .into_iter()
                .map(|r| for_choosing(Template::from(r)))
                .collect();
            offers(&mut tx, tenant_id, &mut list).await?;
            db::done(tx);
            Ok(list)
    }).await
    }
}

/// Hours in an average month (8,766 h a year / 12): what "a month" of running costs.
const HOURS_A_MONTH: f64 = 730.5;

/// Fills in each template's offer for `tenant`: the approval policy's thresholds per size, and
/// the monthly cost by the rate card in force now (the template's own, else the general one).
async fn offers(tx: &mut db::Tx, tenant: Uuid, list: &mut [Template]) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let policy = crate::provisioning::approval::Policy::load(tx, tenant).await?;
    let ids: Vec<Uuid> = list.iter().map(|t| t.id).collect();
    /// A template's card in force: currency, then per vCPU-, memory GiB- and disk GiB-hour.
    type Card = (Uuid, Option<String>, Option<f64>, Option<f64>, Option<f64>);
    let cards: Vec<Card> = sqlx::query_as(
        "SELECT t.id, rc.currency, rc.vcpu_hour::float8, rc.memory_gib_hour::float8, rc.disk_gib_hour::float8
         FROM unnest($1::uuid[]) t(id)
         LEFT JOIN LATERAL (
             SELECT r.currency, r.vcpu_hour, r.memory_gib_hour, r.disk_gib_hour FROM rate_cards r
             WHERE (r.template_id = t.id OR r.template_id IS NULL)
               AND r.valid_from <= now() AND (r.valid_to IS NULL OR now() < r.valid_to)
             ORDER BY r.template_id IS NULL, r.valid_from DESC LIMIT 1) rc ON true",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut others = Vec::new();
    if policy.auto_max_count > 0 {
        others.push(format!(
            "more than {} VM{} at once",
            policy.auto_max_count,
            if policy.auto_max_count == 1 { "" } else { "s" }
        ));
    }
    if policy.auto_max_lease_days > 0 {
        others.push(format!(
            "a lease longer than {} days",
            policy.auto_max_lease_days
        ));
    }
    for t in list.iter_mut() {
        let card = cards.iter().find(|c| c.0 == t.id);
        let template_auto =
            policy.auto_template_ids.is_empty() || policy.auto_template_ids.contains(&t.id);
        let sizes = t
            .sizes
            .iter()
            .map(|s| SizeOffer {
                needs_approval: !(template_auto
                    && policy.auto_max_count > 0
                    && policy.auto_max_lease_days > 0
                    && s.vcpus <= policy.auto_max_vcpus
                    && s.memory_mib <= policy.auto_max_memory_mib),
                monthly_cost: card.and_then(|(_, currency, v, m, d)| {
                    let (currency, v, m, d) = (currency.as_ref()?, (*v)?, (*m)?, (*d)?);
                    let hourly = f64::from(s.vcpus) * v
                        + s.memory_mib as f64 / 1024.0 * m
                        + s.disk_gib as f64 * d;
                    Some(format!("{:.2} {currency} a month", hourly * HOURS_A_MONTH))
                }),
            })
            .collect();
        let approval_note = if others.is_empty() || !template_auto {
            String::new()
        } else {
            format!("Any size needs approval for {}.", others.join(" or "))
        };
        let cost_note = card.and_then(|c| c.1.as_ref()).is_none().then(|| {
            "No rate card is in force for this template, so no cost is shown.".to_string()
        });
        t.offer = Some(Offer {
            sizes,
            approval_note,
            cost_note,
        });
    }
    Ok(())
}

/// A catalog entry holds what a requester needs to choose: not which other tenants are
/// offered the template, nor the hosts, pools and volumes behind it (the templates page has
/// those, for fleet admins).
fn for_choosing(mut t: Template) -> Template {
    t.all_tenants = false;
    t.tenant_ids.clear();
    t.tenant_names.clear();
    t.images.clear();
    t.user_data.clear();
    t
}

/// The login user cloud-init creates: a plain Linux user name, not root. Empty: no cloud-init.
pub fn parse_login_user(raw: &str, field: &str) -> Result<Option<String>, AppError> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok || s == "root" {
        return Err(AppError::field(
            field,
            "Use a Linux user name (lowercase letters, digits, '_' or '-', at most 32), not root, e.g. debian.",
        ));
    }
    Ok(Some(s.to_string()))
}

/// Guest initialisation from the form: the login user and the cloud-config snippet.
fn parse_guest(form: &TemplateForm) -> Result<(Option<String>, String), AppError> {
    let user = parse_login_user(&form.login_user, "login_user");
    let snippet = crate::catalog::cloud_init::parse_snippet(&form.user_data, "user_data");
    let (user, _) = match (user, snippet) {
        (Ok(u), Ok(s)) => (u, s),
        (u, s) => return Err(AppError::merge([u.err(), s.err()])),
    };
    Ok((user, form.user_data.trim().to_string()))
}

/// The networks a template's VMs may join: libvirt network names, or `user` for user-mode
/// networking; at most 8, each once. Empty stands for `user`.
pub fn parse_networks(raw: &str) -> Result<Vec<String>, AppError> {
    let mut out: Vec<String> = Vec::new();
    for part in raw
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let name = storage::parse_name(part, "networks").map_err(|_| {
            AppError::field(
                "networks",
                format!("\u{201c}{part}\u{201d} is not a network name: use letters, digits, '.', '_' or '-', or user for user-mode networking."),
            )
        })?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.len() > 8 {
        return Err(AppError::field("networks", "At most 8 networks."));
    }
    if out == ["user"] {
        out.clear();
    }
    Ok(out)
}

/// The network choices a template offers, in its order (`user` where it lists none).
pub fn network_choices(t: &Template) -> Vec<String> {
    if t.networks.is_empty() {
        vec![USER_NETWORK.to_string()]
    } else {
        t.networks.clone()
    }
}

/// User-mode networking, as templates and requests name it.
pub const USER_NETWORK: &str = "user";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_name_the_line() {
        let s = parse_sizes("small 1 2 20\nlarge, 4, 0.5, 100\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].memory_mib, 512);
        let e = parse_sizes("small 1 2 20\nhuge 999 2 20").unwrap_err();
        assert!(e.field_message("sizes").unwrap().starts_with("Line 2"));
        assert!(parse_sizes("").is_err());
        assert!(parse_sizes("a 1 2 20\na 2 2 20").is_err());
        assert!(parse_sizes("<x> 1 2 20").is_err());
        assert!(parse_sizes("x -1 2 20").is_err());
        assert_eq!(format_sizes(&s), "small 1 2 20\nlarge 4 0.5 100");
    }
}
