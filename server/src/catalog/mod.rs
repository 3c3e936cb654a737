//! Templates and the catalog: the backend of the `Catalog` seam.
pub mod cloud_init;
pub mod image_copy;
pub mod images;
mod validate;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::error::AppError;
use app::images::RegisterImageForm;
use app::provisioning::{Offer, SizeOffer, Template, TemplateForm};
use app::seam::{Catalog, RequestCtx};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;
pub use validate::{parse_days, parse_login_user, parse_text, MAX_VCPUS};
use validate::{Offered, TemplateFields};

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
            let fields = TemplateFields::try_from(&form)?;
            let image = self.template_image(req, &form).await?;
            // The image says who logs in; the template may name another user of it.
            let login_user = fields
                .login_user
                .clone()
                .or_else(|| image.as_ref().and_then(|i| i.login_user.clone()));
            if login_user.is_none() {
                if fields.allow_user_data {
                    return Err(AppError::field(
                        "allow_user_data",
                        "Requesters' cloud-config needs a login user (an image that takes cloud-init).",
                    ).into());
                }
                if !fields.user_data.is_empty() {
                    return Err(AppError::field(
                        "user_data",
                        "A cloud-config snippet needs a login user (an image that takes cloud-init).",
                    ).into());
                }
            }

            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let (all_tenants, tenant_ids) = match &fields.offered {
                Offered::All => (true, Vec::new()),
                Offered::Named(names) => {
                    let found: Vec<(Uuid, String)> = sqlx::query_as(
                        "SELECT id, lower(name) FROM tenants WHERE lower(name) = ANY($1)",
                    )
                    .bind(names)
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
            let sizes_json = serde_json::to_value(&fields.sizes)?;
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
                .bind(&fields.name)
                .bind(&fields.description)
                .bind(&fields.os)
                .bind(&sizes_json)
                .bind(fields.default_lease)
                .bind(fields.max_lease)
                .bind(all_tenants)
                .bind(&tenant_ids)
                .bind(&login_user)
                .bind(&fields.user_data)
                .bind(fields.allow_user_data)
                .bind(&fields.networks)
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
                    "name": fields.name, "os": fields.os, "sizes": sizes_json, "default_lease_days": fields.default_lease,
                    "max_lease_days": fields.max_lease, "all_tenants": all_tenants, "tenant_ids": tenant_ids,
                    "image": image.as_ref().map(|i| i.id),
                    "login_user": login_user, "user_data": fields.user_data, "allow_user_data": fields.allow_user_data,
                    "networks": fields.networks,
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
