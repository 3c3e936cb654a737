//! Domain XML for VMs the portal defines: an askama template with an escaper that also drops
//! control characters (libvirt rejects them), validated names, and an idempotent define keyed
//! by the portal's UUID.
use askama::Template;
use std::fmt;
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;

/// XML escaping for libvirt: the five entities, and no control characters but tab, newline
/// and carriage return.
#[derive(Clone, Copy, Debug)]
pub struct LibvirtXml;

impl askama::filters::Escaper for LibvirtXml {
    fn write_escaped_str<W: fmt::Write>(&self, mut dest: W, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '<' => dest.write_str("&lt;")?,
                '>' => dest.write_str("&gt;")?,
                '&' => dest.write_str("&amp;")?,
                '"' => dest.write_str("&quot;")?,
                '\'' => dest.write_str("&apos;")?,
                '\t' | '\n' | '\r' => dest.write_char(c)?,
                c if (c as u32) < 0x20 || c == '\u{7f}' => {}
                c => dest.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Direct kernel boot, for images without a boot loader.
pub struct DirectBoot {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

/// User-mode networking's forward of a host port to the guest's SSH port.
pub struct SshForward {
    pub address: String,
    pub port: u16,
}

pub struct DiskSpec {
    pub path: String,
    /// Always stated, never probed: a crafted image cannot point libvirt at host files.
    pub format: &'static str,
    pub target: String,
}

#[derive(Template)]
#[template(path = "domain.xml")]
pub struct DomainXml<'a> {
    /// kvm, qemu (TCG) or test (libvirt's test driver).
    pub domain_type: &'a str,
    pub name: &'a str,
    pub uuid: Uuid,
    pub title: &'a str,
    pub tenant: &'a str,
    pub owner: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `cpu_weight::RUNNING`: a start raises it while QEMU starts (see `cpu_weight`).
    pub cpu_weight: u64,
    pub disks: &'a [DiskSpec],
    pub user_network: bool,
    /// A libvirt network to join (virtio NIC), instead of user-mode networking.
    pub network: Option<&'a str>,
    /// With user networking: SSH reaches the guest through this host port.
    pub ssh_forward: Option<SshForward>,
    pub boot: Option<DirectBoot>,
    /// The NoCloud seed volume's path (a read-only virtio disk).
    pub seed: Option<String>,
    /// Serial console, guest agent channel and a VNC display on a UNIX socket (never TCP).
    pub consoles: bool,
    /// The host is itself a VM: nested KVM cannot pass the `arch-capabilities` MSR through
    /// (QEMU aborts with "failed to set MSR 0x10a"), so the guest does without it.
    pub nested: bool,
}

/// A libvirt domain name for a portal VM: its name plus the start of its UUID, since VM
/// names are unique per tenant but libvirt's are unique per host.
pub fn libvirt_name(vm_name: &str, uuid: Uuid) -> String {
    format!("{vm_name}-{}", &uuid.simple().to_string()[..8])
}

/// The domain type a host supports: kvm when its capabilities offer it, else qemu.
pub fn domain_type(conn: &Connect) -> &'static str {
    guest_kind(conn).0
}

/// The domain type, and whether the host itself runs under a hypervisor (nested KVM), from
/// one read of the host's capabilities.
pub fn guest_kind(conn: &Connect) -> (&'static str, bool) {
    let uri = conn.uri().unwrap_or_default();
    if super::is_test_driver(&uri) {
        return ("test", false);
    }
    let caps = conn.capabilities().unwrap_or_default();
    let kvm = caps.contains("<domain type='kvm'") && std::path::Path::new("/dev/kvm").exists();
    let nested = caps.contains("<feature name='hypervisor'/>");
    (if kvm { "kvm" } else { "qemu" }, nested)
}

/// Defines the domain unless one with this UUID exists already (a retry after a crash finds
/// the first one instead of defining a second).
pub fn define_once(conn: &Connect, uuid: Uuid, xml: &str) -> Result<Domain, virt::error::Error> {
    match conn.lookup_domain_by_uuid(uuid) {
        Ok(dom) => Ok(dom),
        Err(_) => conn.define_domain_xml(xml),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(title: &str, domain_type: &str) -> String {
        DomainXml {
            domain_type,
            name: "web-1",
            uuid: Uuid::nil(),
            title,
            tenant: "Acme & Co",
            owner: "ann@example.com",
            memory_mib: 512,
            vcpus: 2,
            cpu_weight: crate::hypervisor::cpu_weight::RUNNING,
            disks: &[DiskSpec {
                path: "/var/lib/libvirt/images/web-1.qcow2".into(),
                format: "qcow2",
                target: "vda".into(),
            }],
            user_network: true,
            network: None,
            nested: false,
            ssh_forward: None,
            boot: None,
            seed: None,
            consoles: false,
        }
        .render()
        .unwrap()
    }

    #[test]
    fn nested_kvm_hosts_do_without_arch_capabilities() {
        let mut xml = DomainXml {
            domain_type: "kvm",
            name: "n",
            uuid: Uuid::nil(),
            title: "n",
            tenant: "t",
            owner: "o",
            memory_mib: 64,
            vcpus: 1,
            cpu_weight: crate::hypervisor::cpu_weight::RUNNING,
            disks: &[],
            user_network: false,
            network: None,
            nested: true,
            ssh_forward: None,
            boot: None,
            seed: None,
            consoles: false,
        };
        let nested = xml.render().unwrap();
        assert!(nested.contains("<feature policy='disable' name='arch-capabilities'/>"));
        // A libvirt network instead of user-mode networking: a virtio NIC on it, nothing else.
        xml.network = Some("lab<net>");
        let on_network = xml.render().unwrap();
        assert!(on_network.contains("<interface type='network'>"));
        assert!(on_network.contains("<source network='lab&lt;net&gt;'/>"));
        assert!(!on_network.contains("type='user'"));
        xml.network = None;
        xml.nested = false;
        let bare = xml.render().unwrap();
        assert!(bare.contains("<cpu mode='host-passthrough'/>"));
        assert!(!bare.contains("arch-capabilities"));
        assert_eq!(libvirt_name("web-1", Uuid::nil()), "web-1-00000000");
    }

    #[test]
    fn metacharacters_are_escaped_and_control_characters_dropped() {
        let xml = render("<script>'x'</script>\u{1}\u{8}\ttab", "qemu");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let title = doc
            .descendants()
            .find(|n| n.has_tag_name("title"))
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(title, "<script>'x'</script>\ttab");
        assert!(!xml.contains('\u{1}'));
        assert!(xml.contains("Acme &amp; Co"));
        let driver = doc
            .descendants()
            .find(|n| n.has_tag_name("driver"))
            .unwrap();
        assert_eq!(
            driver.attribute("type"),
            Some("qcow2"),
            "the format is stated, never probed"
        );
        assert!(
            !xml.contains("host-passthrough"),
            "TCG cannot pass the host CPU through"
        );
        assert!(render("t", "kvm").contains("host-passthrough"));
    }

    #[test]
    fn guests_get_a_seed_consoles_and_an_ssh_forward() {
        let xml = DomainXml {
            domain_type: "qemu",
            name: "web-1",
            uuid: Uuid::nil(),
            title: "web-1",
            tenant: "t",
            owner: "o",
            memory_mib: 512,
            vcpus: 1,
            cpu_weight: crate::hypervisor::cpu_weight::RUNNING,
            disks: &[],
            user_network: true,
            network: None,
            nested: false,
            ssh_forward: Some(SshForward {
                address: "127.0.0.1".into(),
                port: 22001,
            }),
            boot: Some(DirectBoot {
                kernel: "/p/k".into(),
                initrd: "/p/i".into(),
                cmdline: "root=/dev/vda rw".into(),
            }),
            seed: Some("/p/seed.iso".into()),
            consoles: true,
        }
        .render()
        .unwrap();
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let text = |tag: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .map(str::to_string)
        };
        assert_eq!(text("kernel").as_deref(), Some("/p/k"));
        assert_eq!(text("cmdline").as_deref(), Some("root=/dev/vda rw"));
        assert!(xml.contains("hostfwd=tcp:127.0.0.1:22001-:22"));
        assert!(
            xml.contains("<listen type='socket'/>"),
            "VNC on a socket only"
        );
        assert!(
            !xml.contains("<interface type='user'>"),
            "the forward replaces it"
        );
        assert!(xml.contains("<tb-cache unit='MiB'>128</tb-cache>"));
        assert!(xml.contains("org.qemu.guest_agent.0"));
    }

    #[test]
    fn defining_twice_with_one_uuid_gives_one_domain() {
        crate::hypervisor::events::ensure_event_loop();
        let dir = std::env::temp_dir().join(format!("concierge-xml-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = crate::hypervisor::simulation::write_node(&dir, "xml", 0).unwrap();
        let conn = Connect::open(Some(&uri)).unwrap();
        assert_eq!(domain_type(&conn), "test");
        let uuid = Uuid::new_v4();
        let xml = DomainXml {
            domain_type: domain_type(&conn),
            name: "idem-1",
            uuid,
            title: "idempotent",
            tenant: "t",
            owner: "o",
            memory_mib: 64,
            vcpus: 1,
            cpu_weight: crate::hypervisor::cpu_weight::RUNNING,
            disks: &[],
            user_network: false,
            network: None,
            nested: false,
            ssh_forward: None,
            boot: None,
            seed: None,
            consoles: false,
        }
        .render()
        .unwrap();
        let a = define_once(&conn, uuid, &xml).unwrap();
        let b = define_once(&conn, uuid, &xml).unwrap();
        assert_eq!(a.uuid().unwrap(), b.uuid().unwrap());
        assert_eq!(conn.list_all_domains(0).unwrap().len(), 1);
        drop((a, b));
        crate::hypervisor::events::close(conn);
    }
}
