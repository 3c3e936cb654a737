//! Reading a host's counters: libvirt's bulk domain stats (one call for every running domain)
//! and the node's CPU and memory figures. The `virt` crate returns bulk stats as raw pointers
//! and frees them wrongly, so this calls libvirt directly and frees with its own list free.
use std::ffi::CStr;
use std::os::raw::c_int;
use uuid::Uuid;
use virt::connect::Connect;
use virt::error::Error;
use virt_sys as sys;

/// Cumulative counters of one running domain at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainCounters {
    pub uuid: Uuid,
    /// Total CPU time (guest and emulator), nanoseconds.
    pub cpu_time_ns: Option<u64>,
    /// Memory the host really spends on the guest (QEMU's RSS), else the balloon size; bytes.
    pub mem_bytes: Option<u64>,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The host's cumulative CPU time and its memory, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostCounters {
    /// Sum of every CPU time class, nanoseconds (None when the driver cannot tell).
    pub cpu_total_ns: Option<u64>,
    /// Idle and iowait time, nanoseconds.
    pub cpu_idle_ns: Option<u64>,
    pub mem_used_bytes: Option<u64>,
}

fn field_name(field: &[std::os::raw::c_char; 80]) -> &str {
    // SAFETY: libvirt NUL-terminates every field name within its 80 bytes.
    unsafe { CStr::from_ptr(field.as_ptr()) }
        .to_str()
        .unwrap_or("")
}

fn numeric(p: &sys::virTypedParameter) -> Option<u64> {
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => u64::try_from(p.value.i).ok(),
            sys::VIR_TYPED_PARAM_UINT => Some(u64::from(p.value.ui)),
            sys::VIR_TYPED_PARAM_LLONG => u64::try_from(p.value.l).ok(),
            sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE if p.value.d >= 0.0 => Some(p.value.d as u64),
            _ => None,
        }
    }
}

/// Folds one domain's typed parameters into counters; block and interface counters are
/// summed over every device.
pub fn fold_params<'a>(uuid: Uuid, params: impl Iterator<Item = (&'a str, u64)>) -> DomainCounters {
    let mut c = DomainCounters {
        uuid,
        ..Default::default()
    };
    let (mut rss, mut balloon) = (None, None);
    for (name, v) in params {
        match name {
            "cpu.time" => c.cpu_time_ns = Some(v),
            "balloon.rss" => rss = Some(v * 1024),
            "balloon.current" => balloon = Some(v * 1024),
            _ => {
                let mut parts = name.split('.');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some("block"), Some(i), Some("rd"), Some("bytes"))
                        if i.parse::<u32>().is_ok() =>
                    {
                        c.rd_bytes += v
                    }
                    (Some("block"), Some(i), Some("wr"), Some("bytes"))
                        if i.parse::<u32>().is_ok() =>
                    {
                        c.wr_bytes += v
                    }
                    (Some("net"), Some(i), Some("rx"), Some("bytes"))
                        if i.parse::<u32>().is_ok() =>
                    {
                        c.rx_bytes += v
                    }
                    (Some("net"), Some(i), Some("tx"), Some("bytes"))
                        if i.parse::<u32>().is_ok() =>
                    {
                        c.tx_bytes += v
                    }
                    _ => {}
                }
            }
        }
    }
    c.mem_bytes = rss.or(balloon);
    c
}

/// How many domains run on the host, and the counters of those that report any, in one
/// libvirt call.
pub fn read_domains(conn: &Connect) -> Result<(usize, Vec<DomainCounters>), Error> {
    let stats = sys::VIR_DOMAIN_STATS_CPU_TOTAL
        | sys::VIR_DOMAIN_STATS_BALLOON
        | sys::VIR_DOMAIN_STATS_INTERFACE
        | sys::VIR_DOMAIN_STATS_BLOCK;
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is open; on success libvirt hands us a NULL-terminated array that we free
    // below with its own function, which also releases each record's domain and parameters.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            stats,
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
        )
    };
    if n < 0 {
        return Err(Error::last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: i < n entries, each a valid record until the list is freed.
        let rec = unsafe { &**records.add(i) };
        let mut raw = [0u8; sys::VIR_UUID_BUFLEN as usize];
        if unsafe { sys::virDomainGetUUID(rec.dom, raw.as_mut_ptr()) } != 0 {
            continue;
        }
        let params: &[sys::virTypedParameter] = if rec.params.is_null() || rec.nparams <= 0 {
            &[]
        } else {
            // SAFETY: libvirt gives `nparams` parameters at `params`.
            unsafe { std::slice::from_raw_parts(rec.params, rec.nparams as usize) }
        };
        let c = fold_params(
            Uuid::from_bytes(raw),
            params
                .iter()
                .filter_map(|p| numeric(p).map(|v| (field_name(&p.field), v))),
        );
        // Drivers without statistics (the test driver) report only states: nothing to store.
        if c.cpu_time_ns.is_some() || c.mem_bytes.is_some() {
            out.push(c);
        }
    }
    if !records.is_null() {
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok((n as usize, out))
}

/// Reads libvirt's (field, value) node statistics through one of its two same-shaped calls.
fn node_stats(
    call: impl Fn(*mut sys::virNodeCPUStats, *mut c_int) -> c_int,
) -> Result<Vec<(String, u64)>, Error> {
    let mut n: c_int = 0;
    if call(std::ptr::null_mut(), &mut n) < 0 {
        return Err(Error::last_error());
    }
    if n <= 0 {
        return Ok(Vec::new());
    }
    let mut params: Vec<sys::virNodeCPUStats> = (0..n)
        .map(|_| sys::virNodeCPUStats {
            field: [0; 80],
            value: 0,
        })
        .collect();
    if call(params.as_mut_ptr(), &mut n) < 0 {
        return Err(Error::last_error());
    }
    Ok(params
        .iter()
        .take(n.max(0) as usize)
        .map(|p| (field_name(&p.field).to_string(), p.value))
        .collect())
}

/// The host's CPU time and used memory. Drivers without memory stats (the test driver) fall
/// back to total minus free memory.
pub fn read_host(conn: &Connect) -> HostCounters {
    // SAFETY (both closures): `conn` is open and the buffers hold `n` entries.
    let cpu = node_stats(|p, n| unsafe {
        sys::virNodeGetCPUStats(conn.as_ptr(), sys::VIR_NODE_CPU_STATS_ALL_CPUS, p, n, 0)
    });
    let mem = node_stats(|p, n| unsafe {
        // virNodeMemoryStats has the same layout as virNodeCPUStats (field[80], u64).
        sys::virNodeGetMemoryStats(
            conn.as_ptr(),
            sys::VIR_NODE_MEMORY_STATS_ALL_CELLS,
            p.cast(),
            n,
            0,
        )
    });
    let mut h = HostCounters::default();
    if let Ok(cpu) = cpu {
        let get = |k: &str| cpu.iter().find(|(f, _)| f == k).map(|(_, v)| *v);
        // Linux reports kernel/user/idle/iowait; the test driver user/system/idle.
        let total: u64 = cpu.iter().map(|(_, v)| *v).sum();
        if total > 0 {
            h.cpu_total_ns = Some(total);
            h.cpu_idle_ns = Some(get("idle").unwrap_or(0) + get("iowait").unwrap_or(0));
        }
    }
    let kib = |m: &[(String, u64)], k: &str| m.iter().find(|(f, _)| f == k).map(|(_, v)| *v);
    h.mem_used_bytes = match mem {
        Ok(m) if kib(&m, "total").is_some() => {
            let total = kib(&m, "total").unwrap_or(0);
            let spare = kib(&m, "free").unwrap_or(0)
                + kib(&m, "buffers").unwrap_or(0)
                + kib(&m, "cached").unwrap_or(0);
            Some(total.saturating_sub(spare) * 1024)
        }
        _ => match (conn.node_info(), conn.free_memory()) {
            (Ok(info), Ok(free)) => Some((info.memory * 1024).saturating_sub(free)),
            _ => None,
        },
    };
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_devices_and_prefers_rss() {
        let u = Uuid::nil();
        let c = fold_params(
            u,
            [
                ("cpu.time", 5_000u64),
                ("balloon.current", 1024),
                ("balloon.rss", 512),
                ("block.count", 2),
                ("block.0.rd.bytes", 10),
                ("block.1.rd.bytes", 5),
                ("block.0.wr.bytes", 7),
                ("block.0.name", 0),
                ("net.0.rx.bytes", 100),
                ("net.1.rx.bytes", 1),
                ("net.0.tx.bytes", 3),
            ]
            .into_iter(),
        );
        assert_eq!(c.cpu_time_ns, Some(5_000));
        assert_eq!(c.mem_bytes, Some(512 * 1024));
        assert_eq!(
            (c.rd_bytes, c.wr_bytes, c.rx_bytes, c.tx_bytes),
            (15, 7, 101, 3)
        );
        let no_rss = fold_params(u, [("balloon.current", 2u64)].into_iter());
        assert_eq!(no_rss.mem_bytes, Some(2048));
    }
}
