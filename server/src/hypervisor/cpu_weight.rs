//! The CPU weight (libvirt's `<cputune><shares>`: the VM cgroup's `cpu.shares`, or
//! `cpu.weight` on cgroup v2) of the domains the portal defines, and starts that use it.
//!
//! Every VM's cgroup weighs the same, and a starting QEMU does its set-up inside its own VM's
//! cgroup. So while other guests boot (firmware runs flat out for seconds, far longer under
//! nested KVM) a new start gets 1/(N+1) of the CPU: with ten guests booting, a start took
//! 3.5 s instead of 0.5 s. A domain therefore starts with a large weight and drops back to the
//! normal one as soon as it runs, like systemd's `StartupCPUWeight`.
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error, ErrorNumber};

/// The weight of a running portal domain: cgroup v1's default. It is valid on cgroup v2 too
/// (1 to 10,000), where it only counts against the host's other VMs.
pub const RUNNING: u64 = 1024;
/// The weight while QEMU starts: the largest cgroup v2 accepts.
pub const STARTING: u64 = 10_000;

fn set(dom: &Domain, shares: u64, flags: u32) -> Result<(), Error> {
    let info = virt::domain::SchedulerInfo {
        cpu_shares: Some(shares),
        ..Default::default()
    };
    dom.set_scheduler_parameters_flags(&info, flags)
}

/// Starts a defined domain. One whose definition carries the portal's weight starts with
/// `STARTING` and runs with `RUNNING`; any other starts as it is. A host without a CPU
/// controller (a container, say) refuses to start a domain with a weight: the weight is then
/// dropped from the definition and the start tried once more.
pub fn start(conn: &Connect, dom: &Domain) -> Result<(), Error> {
    const CONFIG: u32 = virt_sys::VIR_DOMAIN_AFFECT_CONFIG;
    const LIVE: u32 = virt_sys::VIR_DOMAIN_AFFECT_LIVE;
    let weighted = matches!(
        dom.scheduler_parameters_flags(CONFIG),
        Ok(s) if s.cpu_shares == Some(RUNNING)
    ) && set(dom, STARTING, CONFIG).is_ok();
    let started = dom.create().map(|_| ());
    if !weighted {
        return started;
    }
    match started {
        Ok(()) => {
            // Without cgroups (a session daemon) the live weight cannot be set, and nothing
            // was boosted: put the definition back.
            if let Err(e) = set(dom, RUNNING, LIVE | CONFIG) {
                tracing::debug!(error = %e, "resetting a started domain's CPU weight");
                let _ = set(dom, RUNNING, CONFIG);
            }
            Ok(())
        }
        Err(e) if e.code().is(ErrorNumber::ConfigUnsupported) => {
            tracing::info!(error = %e, "the host cannot weigh domains: starting without a weight");
            let xml = dom.xml_desc(virt_sys::VIR_DOMAIN_XML_INACTIVE)?;
            let plain = conn.define_domain_xml(&without_weight(&xml))?;
            plain.create().map(|_| ())
        }
        Err(e) => {
            let _ = set(dom, RUNNING, CONFIG);
            Err(e)
        }
    }
}

/// The domain XML without its `<shares>` (and without `<cputune>` when nothing else is in it).
pub fn without_weight(xml: &str) -> String {
    let Some(open) = xml.find("<shares>") else {
        return xml.to_string();
    };
    let Some(close) = xml[open..]
        .find("</shares>")
        .map(|i| open + i + "</shares>".len())
    else {
        return xml.to_string();
    };
    let out = format!("{}{}", &xml[..open], &xml[close..]);
    // An empty <cputune> (only white space left inside) goes too.
    if let (Some(a), Some(b)) = (out.find("<cputune>"), out.find("</cputune>")) {
        if a < b && out[a + "<cputune>".len()..b].trim().is_empty() {
            return format!("{}{}", &out[..a], &out[b + "</cputune>".len()..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_is_dropped_and_an_empty_cputune_with_it() {
        let xml = "<domain>\n  <vcpu>1</vcpu>\n  <cputune>\n    <shares>1024</shares>\n  </cputune>\n  <os/>\n</domain>";
        let plain = without_weight(xml);
        assert!(
            !plain.contains("shares") && !plain.contains("cputune"),
            "{plain}"
        );
        assert!(plain.contains("<vcpu>1</vcpu>") && plain.contains("<os/>"));
        let kept =
            "<domain><cputune><shares>1024</shares><period>100000</period></cputune></domain>";
        assert_eq!(
            without_weight(kept),
            "<domain><cputune><period>100000</period></cputune></domain>"
        );
        assert_eq!(without_weight("<domain/>"), "<domain/>");
    }
}
