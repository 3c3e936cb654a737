//! Simulated hosts for libvirt's test driver: a `node.xml` describing a whole host (CPUs,
//! memory, domains, a pool, a network), opened as `test:///absolute/path.xml`. Used by the
//! tests and by the fleet benchmark.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Writes `dir/name.xml` with `domains` domains named `{name}-vm-{i}`; every third one is shut
/// off, every seventh paused, the rest running. Returns the `test:///…` URI.
pub fn write_node(dir: &Path, name: &str, domains: usize) -> std::io::Result<String> {
    let mut xml = String::with_capacity(300 * domains + 2_000);
    xml.push_str(
        "<node>\n  <cpu><nodes>1</nodes><sockets>2</sockets><cores>16</cores><threads>2</threads>\
         <active>64</active><mhz>2400</mhz><model>x86_64</model></cpu>\n  <memory>268435456</memory>\n",
    );
    for i in 0..domains {
        let runstate = if i % 3 == 2 {
            "<test:runstate>5</test:runstate>"
        } else if i % 7 == 6 {
            "<test:runstate>3</test:runstate>"
        } else {
            ""
        };
        let _ = writeln!(
            xml,
            "  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\
             <name>{name}-vm-{i}</name><uuid>{}</uuid><memory unit='MiB'>{}</memory><vcpu>{}</vcpu>\
             <os><type>hvm</type></os><devices><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/{name}-vm-{i}.qcow2'/>\
             <target dev='vda' bus='virtio'/></disk><interface type='user'><mac address='52:54:00:{:02x}:{:02x}:{:02x}'/>\
             <model type='virtio'/></interface></devices>{runstate}</domain>",
            Uuid::new_v4(),
            512 * (1 + i % 4),
            1 + i % 4,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
        );
    }
    let _ = write!(
        xml,
        "  <pool type='dir'><name>{name}-pool</name><uuid>{}</uuid><capacity>1099511627776</capacity>\
         <allocation>109951162777</allocation><available>989560464998</available>\
         <target><path>/var/lib/libvirt/images</path></target></pool>\n\
           <network><name>{name}-net</name><uuid>{}</uuid></network>\n</node>\n",
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let path: PathBuf = dir.join(format!("{name}.xml"));
    std::fs::write(&path, xml)?;
    let absolute = std::fs::canonicalize(&path)?;
    Ok(format!("test://{}", absolute.display()))
}
