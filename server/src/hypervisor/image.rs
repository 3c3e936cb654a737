//! What a base image really is, read from its first bytes through libvirt (so remote hosts
//! work too), before a template may use it. QEMU would follow a qcow2 image's backing file or
//! external data file wherever it points (CVE-2024-32498 class: a crafted image reads host
//! files), and a format that is probed can be spoofed, so the portal detects the format once,
//! refuses those features, and states the format everywhere after.
use super::storage::Format;
use virt::connect::Connect;

/// What inspection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    pub format: Format,
    /// The guest-visible size (qcow2's header; a raw image's file size).
    pub virtual_size: u64,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 v3 incompatible feature bit: the guest data lives in an external file.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
/// Formats QEMU would recognise; a raw image starting with one of these is refused rather
/// than trusted (`LUKS\xba\xbe`, VMDK, VHDX, VDI, QED, and qcow version 1).
const OTHER_MAGICS: &[(&[u8], &str)] = &[
    (b"LUKS\xba\xbe", "LUKS"),
    (b"KDMV", "VMDK"),
    (b"vhdxfile", "VHDX"),
    (b"QED\0", "QED"),
    (b"conectix", "VPC"),
];

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decides from the first bytes of an image (at least 512) and its length in bytes.
pub fn inspect(head: &[u8], length: u64) -> Result<ImageFacts, String> {
    if head.starts_with(QCOW2_MAGIC) {
        if head.len() < 104 {
            return Err("its qcow2 header is cut short".into());
        }
        let version = be_u32(head, 4);
        if !(2..=3).contains(&version) {
            return Err(format!("qcow2 version {version} is not supported"));
        }
        if be_u64(head, 8) != 0 || be_u32(head, 16) != 0 {
            return Err(
                "it has a backing file: flatten it first (qemu-img convert -O qcow2 in out)".into(),
            );
        }
        if be_u32(head, 32) != 0 {
            return Err("it is encrypted".into());
        }
        if version == 3 && be_u64(head, 72) & EXTERNAL_DATA_FILE != 0 {
            return Err("its data lives in an external data file".into());
        }
        // The magic alone proves nothing (a raw disk may start with it): the header's tables
        // must fit the file as a real qcow2 image's do.
        let cluster_bits = be_u32(head, 20);
        let fits = |offset: u64| {
            (9..=21).contains(&cluster_bits)
                && offset != 0
                && offset.is_multiple_of(1u64 << cluster_bits)
                && offset < length
        };
        let header_ok =
            version == 2 || (be_u32(head, 100) >= 104 && be_u32(head, 100).is_multiple_of(8));
        if !header_ok
            || (be_u32(head, 36) != 0 && !fits(be_u64(head, 40)))
            || !fits(be_u64(head, 48))
        {
            return Err(
                "it starts like a qcow2 image but its header does not fit the file (a raw image claiming to be qcow2?)"
                    .into(),
            );
        }
        return Ok(ImageFacts {
            format: Format::Qcow2,
            virtual_size: be_u64(head, 24),
        });
    }
    if head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001" {
        // An ISO 9660 image is raw data, but not a disk to boot a template from.
        return Err("it is an ISO image, not a disk image".into());
    }
    if let Some((_, name)) = OTHER_MAGICS.iter().find(|(m, _)| head.starts_with(m)) {
        return Err(format!("it is a {name} image; convert it to qcow2"));
    }
    if head.len() >= 68 && &head[64..68] == b"\x7f\x10\xda\xbe" {
        return Err("it is a VDI image; convert it to qcow2".into());
    }
    Ok(ImageFacts {
        format: Format::Raw,
        virtual_size: length,
    })
}

/// An image read whole: what it is, its length in bytes and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRead {
    pub facts: ImageFacts,
    pub length: u64,
    pub sha256: String,
}

/// How much of an image's start `inspect` looks at.
const HEAD_BYTES: usize = 0x8010;

/// Reads a whole volume through libvirt's download stream (so remote hosts work too): its
/// SHA-256, its length, and what its first bytes say it is. `progress` hears the bytes read.
pub fn read_volume(
    conn: &Connect,
    pool: &str,
    name: &str,
    mut progress: impl FnMut(u64),
) -> Result<ImageRead, String> {
    use sha2::{Digest, Sha256};
    let msg = |e: virt::error::Error| e.message().to_string();
    let vol = conn
        .lookup_storage_pool_by_name(pool)
        .and_then(|p| p.lookup_storage_vol_by_name(name))
        .map_err(msg)?;
    let stream = virt::stream::Stream::new(conn, 0).map_err(msg)?;
    // Length 0: to the end of the file (the container's bytes, not the guest's disk).
    vol.download(&stream, 0, 0, 0).map_err(msg)?;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let chunk = &buf[..n as usize];
                if head.len() < HEAD_BYTES {
                    let take = (HEAD_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                hasher.update(chunk);
                length += chunk.len() as u64;
                progress(length);
            }
            Err(e) => {
                let _ = stream.abort();
                return Err(msg(e));
            }
        }
    }
    stream.finish().map_err(msg)?;
    let facts = inspect(&head, length)?;
    Ok(ImageRead {
        facts,
        length,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 header as qemu-img writes it (version 3, 64 MiB), with fields to spoil.
    fn qcow2(backing_offset: u64, crypt: u32, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 0x8010];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&backing_offset.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h[36..40].copy_from_slice(&1u32.to_be_bytes());
        h[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        h[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_and_raw_are_told_apart_and_dangerous_features_refused() {
        assert_eq!(
            inspect(&qcow2(0, 0, 0), 0x50000).unwrap(),
            ImageFacts {
                format: Format::Qcow2,
                virtual_size: 64 << 20
            }
        );
        assert!(inspect(&qcow2(0x150, 0, 0), 1)
            .unwrap_err()
            .contains("backing file"));
        assert!(inspect(&qcow2(0, 2, 0), 1)
            .unwrap_err()
            .contains("encrypted"));
        assert!(inspect(&qcow2(0, 0, EXTERNAL_DATA_FILE), 1)
            .unwrap_err()
            .contains("external data file"));
        assert!(inspect(&qcow2(0, 0, 0)[..64], 1)
            .unwrap_err()
            .contains("cut short"));
        // The magic on a raw disk, or a header whose tables lie past the file's end.
        let mut fake = vec![0u8; 0x8010];
        fake[..4].copy_from_slice(QCOW2_MAGIC);
        fake[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(inspect(&fake, 8 << 20)
            .unwrap_err()
            .contains("claiming to be qcow2"));
        assert!(inspect(&qcow2(0, 0, 0), 0x20000)
            .unwrap_err()
            .contains("does not fit"));
        let zeros = vec![0u8; 0x8010];
        assert_eq!(
            inspect(&zeros, 8 << 20).unwrap(),
            ImageFacts {
                format: Format::Raw,
                virtual_size: 8 << 20
            }
        );
        let mut vmdk = zeros.clone();
        vmdk[..4].copy_from_slice(b"KDMV");
        assert!(inspect(&vmdk, 1).unwrap_err().contains("VMDK"));
        let mut iso = zeros;
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert!(inspect(&iso, 1).unwrap_err().contains("ISO"));
    }
}
