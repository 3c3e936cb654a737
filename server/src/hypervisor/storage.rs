//! Storage pools and volumes: `dir` pools, qcow2 volumes, linked clones (an overlay whose
//! backing store is a template's base image) and full copies. Formats are always stated,
//! never probed, so a crafted image cannot make libvirt open host files.
use app::error::AppError;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

/// A pool or volume name: letters, digits, '.', '_' and '-', at most 64, not starting with a
/// dot (no path tricks).
pub fn parse_name(raw: &str, field: &str) -> Result<String, AppError> {
    let s = raw.trim();
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(AppError::field(
            field,
            "Use up to 64 letters, digits, '.', '_' or '-', not starting with '.'.",
        ))
    }
}

/// An absolute directory path without `..`, spaces-only or control characters.
pub fn parse_dir(raw: &str, field: &str) -> Result<String, AppError> {
    let s = raw.trim();
    if !s.starts_with('/')
        || s.split('/').any(|p| p == "..")
        || s.chars().any(char::is_control)
        || s.len() > 255
    {
        return Err(AppError::field(
            field,
            "Enter an absolute directory path such as /var/lib/libvirt/images.",
        ));
    }
    Ok(s.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

pub fn dir_pool_xml(name: &str, path: &str) -> String {
    format!(
        "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>",
        esc(name),
        esc(path)
    )
}

pub fn volume_xml(
    name: &str,
    capacity_bytes: u64,
    format: Format,
    backing: Option<(&str, Format)>,
) -> String {
    let backing = backing
        .map(|(path, f)| {
            format!(
                "<backingStore><path>{}</path><format type='{}'/></backingStore>",
                esc(path),
                f.as_str()
            )
        })
        .unwrap_or_default();
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity_bytes}</capacity>\
         <target><format type='{}'/></target>{backing}</volume>",
        esc(name),
        format.as_str()
    )
}

/// Defines, builds, starts and autostarts a `dir` pool.
pub fn create_dir_pool(
    conn: &Connect,
    name: &str,
    path: &str,
) -> Result<StoragePool, virt::error::Error> {
    let pool = conn.define_storage_pool_xml(&dir_pool_xml(name, path), 0)?;
    pool.build(0)?;
    pool.create(0)?;
    let _ = pool.set_autostart(true);
    Ok(pool)
}

pub fn create_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
    capacity_bytes: u64,
    format: Format,
) -> Result<StorageVol, virt::error::Error> {
    let pool = conn.lookup_storage_pool_by_name(pool)?;
    StorageVol::create_xml(&pool, &volume_xml(name, capacity_bytes, format, None), 0)
}

/// A qcow2 overlay on `base` (the linked clone): instant, and shares the base's blocks.
pub fn linked_clone(
    conn: &Connect,
    pool: &str,
    name: &str,
    base: &str,
) -> Result<StorageVol, virt::error::Error> {
    let pool = conn.lookup_storage_pool_by_name(pool)?;
    let base_vol = pool.lookup_storage_vol_by_name(base)?;
    let base_path = base_vol.path()?;
    let base_info = base_vol.info()?;
    // The base's format is what the catalog recorded for it; images are qcow2.
    StorageVol::create_xml(
        &pool,
        &volume_xml(
            name,
            base_info.capacity,
            Format::Qcow2,
            Some((&base_path, Format::Qcow2)),
        ),
        0,
    )
}

/// The VM's disk as a linked clone of `base` with at least `capacity_bytes`, unless a volume
/// of that name exists already (a retry after a crash finds the first one). Returns its path.
pub fn clone_once(
    conn: &Connect,
    pool: &str,
    name: &str,
    base: &str,
    capacity_bytes: u64,
) -> Result<String, virt::error::Error> {
    let p = conn.lookup_storage_pool_by_name(pool)?;
    if let Ok(existing) = p.lookup_storage_vol_by_name(name) {
        return existing.path();
    }
    let base_vol = p.lookup_storage_vol_by_name(base)?;
    let base_path = base_vol.path()?;
    let capacity = base_vol.info()?.capacity.max(capacity_bytes);
    let vol = StorageVol::create_xml(
        &p,
        &volume_xml(
            name,
            capacity,
            Format::Qcow2,
            Some((&base_path, Format::Qcow2)),
        ),
        0,
    )?;
    vol.path()
}

/// An independent copy of `source`.
pub fn full_copy(
    conn: &Connect,
    pool: &str,
    name: &str,
    source: &str,
) -> Result<StorageVol, virt::error::Error> {
    let pool = conn.lookup_storage_pool_by_name(pool)?;
    let src = pool.lookup_storage_vol_by_name(source)?;
    let info = src.info()?;
    StorageVol::create_xml_from(
        &pool,
        &volume_xml(name, info.capacity, Format::Qcow2, None),
        &src,
        0,
    )
}

pub fn delete_volume(conn: &Connect, pool: &str, name: &str) -> Result<(), virt::error::Error> {
    let pool = conn.lookup_storage_pool_by_name(pool)?;
    pool.lookup_storage_vol_by_name(name)?.delete(0)
}

/// Streams `length` bytes from `data` into a new volume `name` with libvirt's volume upload
/// (so it works on remote hosts too), replacing a volume of that name an interrupted earlier
/// try left. A failed upload aborts the stream and deletes the volume: nothing half-written
/// stays behind. Returns the volume's path on the host.
pub fn upload_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
    format: Format,
    mut data: impl std::io::Read,
    length: u64,
) -> Result<String, virt::error::Error> {
    let p = conn.lookup_storage_pool_by_name(pool)?;
    if let Ok(old) = p.lookup_storage_vol_by_name(name) {
        old.delete(0)?;
    }
    let vol = StorageVol::create_xml(&p, &volume_xml(name, length.max(1), format, None), 0)?;
    let written = (|| {
        let stream = virt::stream::Stream::new(conn, 0)?;
        vol.upload(&stream, 0, length, 0)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = length;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match data.read(&mut buf[..want]) {
                Ok(0) | Err(_) => {
                    let _ = stream.abort();
                    return Err(virt::error::Error::last_error());
                }
                Ok(n) => n,
            };
            let mut sent = 0;
            while sent < n {
                let k = stream.send(&buf[sent..n])?;
                if k <= 0 {
                    let _ = stream.abort();
                    return Err(virt::error::Error::last_error());
                }
                sent += k as usize;
            }
            left -= n as u64;
        }
        stream.finish()
    })();
    if let Err(e) = written {
        let _ = vol.delete(0);
        return Err(e);
    }
    vol.path()
}

/// Volume names of a pool, after a refresh.
pub fn volumes(conn: &Connect, pool: &str) -> Result<Vec<String>, virt::error::Error> {
    let pool = conn.lookup_storage_pool_by_name(pool)?;
    pool.refresh(0)?;
    pool.list_volumes()
}

/// A volume as the host page shows it.
#[derive(Debug, Clone)]
pub struct VolumeFacts {
    pub name: String,
    pub path: String,
    pub capacity: u64,
    pub allocation: u64,
    /// The file this volume is a linked clone of, if any.
    pub backing: Option<String>,
}

/// Every volume of a pool with its size and backing file, after a refresh.
pub fn volume_facts(conn: &Connect, pool: &str) -> Result<Vec<VolumeFacts>, virt::error::Error> {
    let pool = conn.lookup_storage_pool_by_name(pool)?;
    pool.refresh(0)?;
    let mut out = Vec::new();
    for vol in pool.list_all_volumes(0)? {
        let info = vol.info()?;
        let xml = vol.xml_desc(0).unwrap_or_default();
        out.push(VolumeFacts {
            name: vol.name()?,
            path: vol.path().unwrap_or_default(),
            capacity: info.capacity,
            allocation: info.allocation,
            backing: backing_path(&xml),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `<volume><backingStore><path>` of a volume's XML.
fn backing_path(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let store = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("backingStore"))?;
    let path = store.children().find(|n| n.has_tag_name("path"))?.text()?;
    Some(path.trim().to_string()).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn names_and_paths_are_validated() {
        assert!(parse_name("web-1.qcow2", "name").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65), "a<b"] {
            assert!(parse_name(bad, "name").is_err(), "{bad:?}");
        }
        assert!(parse_dir("/var/lib/libvirt/images", "path").is_ok());
        for bad in ["relative", "/var/../etc", "/a\u{1}b"] {
            assert!(parse_dir(bad, "path").is_err(), "{bad:?}");
        }
        assert!(volume_xml("a'b", 1, Format::Qcow2, None).contains("a&apos;b"));
    }

    #[test]
    fn pools_volumes_linked_clones_and_copies_on_the_test_driver() {
        crate::hypervisor::events::ensure_event_loop();
        let dir = std::env::temp_dir().join(format!("concierge-st-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = crate::hypervisor::simulation::write_node(&dir, "st", 0).unwrap();
        let conn = Connect::open(Some(&uri)).unwrap();
        let pool = create_dir_pool(&conn, "images", "/var/lib/concierge-test/images").unwrap();
        assert!(pool.is_active().unwrap());
        let base = create_volume(&conn, "images", "base.qcow2", 1 << 30, Format::Qcow2).unwrap();
        let clone = linked_clone(&conn, "images", "vm-1.qcow2", "base.qcow2").unwrap();
        let xml = clone.xml_desc(0).unwrap();
        assert!(
            xml.contains("<backingStore>") || xml.contains("base.qcow2"),
            "{xml}"
        );
        let copy = full_copy(&conn, "images", "vm-2.qcow2", "base.qcow2").unwrap();
        let mut names = volumes(&conn, "images").unwrap();
        names.sort();
        assert_eq!(names, ["base.qcow2", "vm-1.qcow2", "vm-2.qcow2"]);
        delete_volume(&conn, "images", "vm-2.qcow2").unwrap();
        assert_eq!(volumes(&conn, "images").unwrap().len(), 2);
        assert!(delete_volume(&conn, "images", "nope").is_err());
        drop((pool, base, clone, copy));
        crate::hypervisor::events::close(conn);
    }
}
