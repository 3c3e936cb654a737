//! Templates and the catalog: the backend of the `Catalog` seam.
use crate::audit::{self, Event, Origin};
use crate::db::{self, Scope};
use crate::hypervisor::{storage, Hypervisors};
use app::error::AppError;
use app::provisioning::{Size, Template, TemplateForm};
use app::seam::{Catalog, RequestCtx};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub struct CatalogBackend {
    pub pool: PgPool,
    pub hypervisors: Arc<Hypervisors>,
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

fn parse_text(raw: &str, field: &str, max: usize, required: bool) -> Result<String, AppError> {
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
    hidden: bool,
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
            hidden: r.hidden,
        }
    }
}

/// `$1` is the viewing tenant (for `hidden`), or NULL.
const TEMPLATE_SELECT: &str = "
    SELECT t.id, t.name, t.description, t.os, t.sizes, t.default_lease_days, t.max_lease_days,
           t.published, t.all_tenants, t.tenant_ids,
           coalesce((SELECT array_agg(tn.name ORDER BY tn.name) FROM tenants tn WHERE tn.id = ANY(t.tenant_ids)), '{}') AS tenant_names,
           coalesce((SELECT jsonb_agg(jsonb_build_object('host_id', i.host_id, 'host_name', h.name, 'pool', i.pool, 'volume', i.volume) ORDER BY h.name)
                     FROM template_images i JOIN hosts h ON h.id = i.host_id WHERE i.template_id = t.id), '[]') AS images,
           EXISTS (SELECT 1 FROM template_hidden x WHERE x.template_id = t.id AND x.tenant_id = $1) AS hidden
    FROM templates t";

/// A template as one tenant may use it: published, offered to the tenant, not hidden there.
pub async fn usable_template(
    tx: &mut db::Tx,
    tenant: Uuid,
    template: Uuid,
) -> Result<Template, AppError> {
    let row: Option<TemplateRow> = sqlx::query_as(&format!(
        "{TEMPLATE_SELECT} WHERE t.id = $2 AND t.published AND (t.all_tenants OR $1 = ANY(t.tenant_ids))"
    ))
    .bind(tenant)
    .bind(template)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db::internal)?;
    match row {
        Some(r) if !r.hidden => Ok(r.into()),
        _ => Err(AppError::field(
            "template_id",
            "Choose a template from your catalog.",
        )),
    }
}

#[async_trait]
impl Catalog for CatalogBackend {
    async fn templates(&self, req: &RequestCtx) -> Result<Vec<Template>, AppError> {
        req.fleet_admin()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let rows: Vec<TemplateRow> =
            sqlx::query_as(&format!("{TEMPLATE_SELECT} ORDER BY lower(t.name)"))
                .bind(None::<Uuid>)
                .fetch_all(&mut *tx)
                .await
                .map_err(db::internal)?;
        Ok(rows.into_iter().map(Template::from).collect())
    }

    #[tracing::instrument(skip_all)]
    async fn save(&self, req: &RequestCtx, form: TemplateForm) -> Result<Uuid, AppError> {
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
        let image = match (
            form.image_host,
            form.image_pool.trim(),
            form.image_volume.trim(),
        ) {
            (None, "", "") => Ok(None),
            (Some(host), pool, volume) => {
                match (
                    storage::parse_name(pool, "image_pool"),
                    storage::parse_name(volume, "image_volume"),
                ) {
                    (Ok(p), Ok(v)) => Ok(Some((host, p, v))),
                    (p, v) => Err(AppError::merge([p.err(), v.err()])),
                }
            }
            (None, ..) => Err(AppError::field(
                "image_host",
                "Choose the host that holds the base image.",
            )),
        };
        let (name, description, os, sizes, default_lease, max_lease, image) = match (
            name,
            description,
            os,
            sizes,
            default_lease,
            max_lease,
            image,
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f), Ok(g)) if lease_order.is_none() => {
                (a, b, c, d, e, f, g)
            }
            (a, b, c, d, e, f, g) => {
                return Err(AppError::merge([
                    a.err(),
                    b.err(),
                    c.err(),
                    d.err(),
                    e.err(),
                    f.err(),
                    g.err(),
                    lease_order,
                ]))
            }
        };
        if form.id.is_none() && image.is_none() {
            return Err(AppError::field(
                "image_host",
                "A new template needs a base image: choose its host, pool and volume.",
            ));
        }
        // The base image must exist where the form says (libvirt's answer, off the executor).
        if let Some((host, pool, volume)) = &image {
            let (pool, volume) = (pool.clone(), volume.clone());
            self.hypervisors
                .call(*host, move |conn| {
                    let p = conn.lookup_storage_pool_by_name(&pool)?;
                    let _ = p.refresh(0);
                    p.lookup_storage_vol_by_name(&volume).map(|_| ())
                })
                .await
                .map_err(|e| {
                    AppError::field("image_volume", format!("The host does not have it: {e}"))
                })?;
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
                .await
                .map_err(db::internal)?;
                if let Some(missing) = names.iter().find(|n| !found.iter().any(|(_, f)| f == *n)) {
                    return Err(AppError::field(
                        "tenants",
                        format!("There is no tenant named \u{201c}{missing}\u{201d}. Use * for every tenant."),
                    ));
                }
                (false, found.into_iter().map(|(id, _)| id).collect())
            }
        };
        let sizes_json = serde_json::to_value(&sizes).map_err(db::internal)?;
        let id = match form.id {
            None => sqlx::query_scalar(
                "INSERT INTO templates (name, description, os, sizes, default_lease_days, max_lease_days, all_tenants, tenant_ids)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(&name)
            .bind(&description)
            .bind(&os)
            .bind(&sizes_json)
            .bind(default_lease)
            .bind(max_lease)
            .bind(all_tenants)
            .bind(&tenant_ids)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?,
            Some(id) => sqlx::query_scalar(
                "UPDATE templates SET name = $2, description = $3, os = $4, sizes = $5, default_lease_days = $6,
                        max_lease_days = $7, all_tenants = $8, tenant_ids = $9, updated_at = now()
                 WHERE id = $1 RETURNING id",
            )
            .bind(id)
            .bind(&name)
            .bind(&description)
            .bind(&os)
            .bind(&sizes_json)
            .bind(default_lease)
            .bind(max_lease)
            .bind(all_tenants)
            .bind(&tenant_ids)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .ok_or_else(|| AppError::NotFound("Template".into()))?,
        };
        if let Some((host, pool, volume)) = &image {
            sqlx::query(
                "INSERT INTO template_images (template_id, host_id, pool, volume) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (template_id, host_id) DO UPDATE SET pool = excluded.pool, volume = excluded.volume",
            )
            .bind(id)
            .bind(host)
            .bind(pool)
            .bind(volume)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                    AppError::field("image_host", "Choose a registered host.")
                }
                _ => db::internal(e),
            })?;
        }
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
                "image": image.as_ref().map(|(h, p, v)| json!({"host": h, "pool": p, "volume": v})),
            })),
        )
        .await?;
        tx.commit().await.map_err(db::internal)?;
        Ok(id)
    }

    async fn set_published(
        &self,
        req: &RequestCtx,
        id: Uuid,
        published: bool,
    ) -> Result<(), AppError> {
        req.fleet_admin()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let images: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM template_images i WHERE i.template_id = t.id) FROM templates t WHERE t.id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db::internal)?;
        let images = images.ok_or_else(|| AppError::NotFound("Template".into()))?;
        if published && images == 0 {
            return Err(AppError::Conflict(
                "Add a base image on at least one host before publishing.".into(),
            ));
        }
        sqlx::query("UPDATE templates SET published = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(published)
            .execute(&mut *tx)
            .await
            .map_err(db::internal)?;
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
        tx.commit().await.map_err(db::internal)
    }

    async fn set_hidden(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        id: Uuid,
        hidden: bool,
    ) -> Result<(), AppError> {
        let actor = req.actor()?;
        if !actor.administers(tenant_id) {
            return Err(AppError::Forbidden);
        }
        let mut tx = db::begin(&self.pool, Scope::tenant(tenant_id)).await?;
        let offered: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM templates WHERE id = $1 AND (all_tenants OR $2 = ANY(tenant_ids)))",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db::internal)?;
        if !offered {
            return Err(AppError::NotFound("Template".into()));
        }
        if hidden {
            sqlx::query("INSERT INTO template_hidden (template_id, tenant_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        } else {
            sqlx::query("DELETE FROM template_hidden WHERE template_id = $1 AND tenant_id = $2")
        }
        .bind(id)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(db::internal)?;
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
        tx.commit().await.map_err(db::internal)
    }

    async fn catalog(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        search: &str,
        include_hidden: bool,
    ) -> Result<Vec<Template>, AppError> {
        let actor = req.actor()?;
        if actor.role_in(tenant_id).is_none() && !actor.fleet_admin {
            return Err(AppError::NotFound("Tenant".into()));
        }
        let include_hidden = include_hidden && actor.administers(tenant_id);
        let pattern = format!("%{}%", db::escape_like(&search.trim().to_lowercase()));
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
        .await
        .map_err(db::internal)?;
        Ok(rows
            .into_iter()
            .map(|r| for_choosing(Template::from(r)))
            .collect())
    }
}

/// A catalog entry holds what a requester needs to choose: not which other tenants are
/// offered the template, nor the hosts, pools and volumes behind it (the templates page has
/// those, for fleet admins).
fn for_choosing(mut t: Template) -> Template {
    t.all_tenants = false;
    t.tenant_ids.clear();
    t.tenant_names.clear();
    t.images.clear();
    t
}

fn map_err(e: sqlx::Error) -> AppError {
    if let sqlx::Error::Database(d) = &e {
        if d.constraint() == Some("templates_name_key") {
            return AppError::field("name", "A template with that name already exists.");
        }
    }
    db::map_err(e)
}

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
