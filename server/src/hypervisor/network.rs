//! Virtual networks: NAT, isolated and bridged. These machines have no dnsmasq or iptables,
//! so real networks cannot start here; the operations are exercised on libvirt's test driver.
use app::error::AppError;
use std::net::Ipv4Addr;
use virt::connect::Connect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// NAT to the host's uplink, with a DHCP range inside `address/prefix`.
    Nat { address: Ipv4Addr, prefix: u8 },
    /// No forwarding: guests reach each other and the host only.
    Isolated { address: Ipv4Addr, prefix: u8 },
    /// Guests join an existing host bridge.
    Bridge { bridge: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub mode: Mode,
}

impl NetworkSpec {
    /// Validates every field, naming the one that is wrong.
    pub fn parse(
        name: &str,
        mode: &str,
        address: &str,
        prefix: &str,
        bridge: &str,
    ) -> Result<Self, AppError> {
        let name = name.trim();
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AppError::field(
                "name",
                "Use 1 to 32 letters, digits, '-' or '_'.",
            ));
        }
        let subnet = || -> Result<(Ipv4Addr, u8), AppError> {
            let addr: Ipv4Addr = address.trim().parse().map_err(|_| {
                AppError::field("address", "Enter the gateway address, e.g. 10.20.0.1.")
            })?;
            let prefix: u8 = prefix
                .trim()
                .parse()
                .ok()
                .filter(|p| (16..=29).contains(p))
                .ok_or_else(|| AppError::field("prefix", "Use a prefix length from 16 to 29."))?;
            if !addr.is_private() {
                return Err(AppError::field(
                    "address",
                    "Use an address from a private range (10/8, 172.16/12, 192.168/16).",
                ));
            }
            let host_bits = 32 - u32::from(prefix);
            let host_part = u32::from(addr) & ((1u32 << host_bits) - 1);
            if host_part == 0 || host_part == (1u32 << host_bits) - 1 {
                return Err(AppError::field(
                    "address",
                    "The gateway cannot be the network or broadcast address.",
                ));
            }
            Ok((addr, prefix))
        };
        let mode = match mode {
            "nat" => {
                let (address, prefix) = subnet()?;
                Mode::Nat { address, prefix }
            }
            "isolated" => {
                let (address, prefix) = subnet()?;
                Mode::Isolated { address, prefix }
            }
            "bridge" => {
                let b = bridge.trim();
                if b.is_empty()
                    || b.len() > 15
                    || !b
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(AppError::field(
                        "bridge",
                        "Enter the host bridge's name (up to 15 characters).",
                    ));
                }
                Mode::Bridge {
                    bridge: b.to_string(),
                }
            }
            _ => return Err(AppError::field("mode", "Choose NAT, isolated or bridge.")),
        };
        Ok(NetworkSpec {
            name: name.to_string(),
            mode,
        })
    }

    /// The network XML (every value was validated to a safe alphabet above).
    pub fn xml(&self) -> String {
        let ip = |address: Ipv4Addr, prefix: u8| {
            let base = u32::from(address) & !((1u32 << (32 - u32::from(prefix))) - 1);
            let last = base | ((1u32 << (32 - u32::from(prefix))) - 2);
            let start = Ipv4Addr::from(u32::from(address) + 1);
            format!(
                "<ip address='{address}' prefix='{prefix}'><dhcp><range start='{start}' end='{}'/></dhcp></ip>",
                Ipv4Addr::from(last)
            )
        };
        match &self.mode {
            Mode::Nat { address, prefix } => format!("<network><name>{}</name><forward mode='nat'/>{}</network>", self.name, ip(*address, *prefix)),
            Mode::Isolated { address, prefix } => format!("<network><name>{}</name>{}</network>", self.name, ip(*address, *prefix)),
            Mode::Bridge { bridge } => format!("<network><name>{}</name><forward mode='bridge'/><bridge name='{bridge}'/></network>", self.name),
        }
    }
}

pub fn define(conn: &Connect, spec: &NetworkSpec) -> Result<(), virt::error::Error> {
    let net = conn.define_network_xml(&spec.xml())?;
    let _ = net.set_autostart(true);
    Ok(())
}

pub fn set_active(conn: &Connect, name: &str, active: bool) -> Result<(), virt::error::Error> {
    let net = conn.lookup_network_by_name(name)?;
    if active {
        net.create().map(|_| ())
    } else {
        net.destroy()
    }
}

pub fn delete(conn: &Connect, name: &str) -> Result<(), virt::error::Error> {
    let net = conn.lookup_network_by_name(name)?;
    if net.is_active().unwrap_or(false) {
        net.destroy()?;
    }
    net.undefine()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_validated_field_by_field() {
        let err =
            |r: Result<NetworkSpec, AppError>, f: &str| r.unwrap_err().field_message(f).is_some();
        assert!(err(
            NetworkSpec::parse("bad name", "nat", "10.20.0.1", "24", ""),
            "name"
        ));
        assert!(err(NetworkSpec::parse("n1", "mesh", "", "", ""), "mode"));
        assert!(err(
            NetworkSpec::parse("n1", "nat", "8.8.8.1", "24", ""),
            "address"
        ));
        assert!(err(
            NetworkSpec::parse("n1", "nat", "10.20.0.0", "24", ""),
            "address"
        ));
        assert!(err(
            NetworkSpec::parse("n1", "nat", "10.20.0.255", "24", ""),
            "address"
        ));
        assert!(err(
            NetworkSpec::parse("n1", "nat", "10.20.0.1", "31", ""),
            "prefix"
        ));
        assert!(err(
            NetworkSpec::parse("n1", "nat", "not-an-ip", "24", ""),
            "address"
        ));
        assert!(err(
            NetworkSpec::parse("n1", "bridge", "", "", "br0; rm -rf /"),
            "bridge"
        ));
        let nat = NetworkSpec::parse("n1", "nat", "10.20.0.1", "24", "").unwrap();
        assert!(
            nat.xml()
                .contains("<range start='10.20.0.2' end='10.20.0.254'/>"),
            "{}",
            nat.xml()
        );
    }

    #[test]
    fn define_start_stop_delete_on_the_test_driver() {
        crate::hypervisor::events::ensure_event_loop();
        let dir =
            std::env::temp_dir().join(format!("concierge-net-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = crate::hypervisor::simulation::write_node(&dir, "net", 0).unwrap();
        let conn = Connect::open(Some(&uri)).unwrap();
        for (name, mode, bridge) in [
            ("nat-1", "nat", ""),
            ("iso-1", "isolated", ""),
            ("br-1", "bridge", "br0"),
        ] {
            let spec = NetworkSpec::parse(name, mode, "10.30.0.1", "24", bridge).unwrap();
            define(&conn, &spec).unwrap();
            set_active(&conn, name, true).unwrap();
            assert!(conn
                .lookup_network_by_name(name)
                .unwrap()
                .is_active()
                .unwrap());
            set_active(&conn, name, false).unwrap();
            delete(&conn, name).unwrap();
            assert!(conn.lookup_network_by_name(name).is_err());
        }
        crate::hypervisor::events::close(conn);
    }
}
