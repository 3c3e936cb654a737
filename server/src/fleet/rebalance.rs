//! Rebalancing advice: hosts whose allocated memory is above the fleet's mean share by more
//! than a margin, and which VMs moved where would even them out. Greedy: from the fullest
//! host, move the VM whose size best closes its gap to the least loaded host that can take it
//! (memory, vCPUs after overcommit, the template's image there and room in its pool), while
//! that narrows the spread. A move is carried out by `provisioning::migration` (cold, while off).
use std::collections::HashMap;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Host {
    pub id: Uuid,
    pub name: String,
    pub memory_mib: f64,
    pub used_mib: f64,
    pub vcpu_capacity: f64,
    pub vcpus: f64,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: Uuid,
    pub name: String,
    pub host: Uuid,
    pub vcpus: f64,
    pub memory_mib: f64,
    pub disk_gib: f64,
    /// Hosts holding its template's image, with the free GiB of that pool.
    pub targets: HashMap<Uuid, f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub vm: Uuid,
    pub from: Uuid,
    pub to: Uuid,
}

fn load(h: &Host) -> f64 {
    if h.memory_mib > 0.0 {
        h.used_mib / h.memory_mib
    } else {
        0.0
    }
}

fn spread(hosts: &[Host]) -> f64 {
    let loads = hosts.iter().map(load);
    let max = loads.clone().fold(0.0, f64::max);
    let min = loads.fold(f64::MAX, f64::min);
    if hosts.is_empty() {
        0.0
    } else {
        max - min
    }
}

/// The moves, and the hosts as they would be after them. `margin`: a fraction of capacity
/// (0.1 = ten points above the mean).
pub fn plan(
    mut hosts: Vec<Host>,
    mut vms: Vec<Vm>,
    margin: f64,
    max_moves: usize,
) -> (Vec<Move>, Vec<Host>) {
    let total: f64 = hosts.iter().map(|h| h.memory_mib).sum();
    let used: f64 = hosts.iter().map(|h| h.used_mib).sum();
    if total <= 0.0 || hosts.len() < 2 {
        return (Vec::new(), hosts);
    }
    let mean = used / total;
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let Some(src) = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| load(h) > mean + margin)
            .max_by(|a, b| load(a.1).total_cmp(&load(b.1)))
            .map(|(i, _)| i)
        else {
            break;
        };
        let gap_mib = hosts[src].used_mib - mean * hosts[src].memory_mib;
        let before = spread(&hosts);
        // Candidates: (closeness of the VM's size to the gap, vm index, target index).
        let mut best: Option<(f64, usize, usize)> = None;
        for (vi, vm) in vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.host == hosts[src].id)
        {
            for (ti, t) in hosts.iter().enumerate() {
                if ti == src {
                    continue;
                }
                let fits = t.used_mib + vm.memory_mib <= t.memory_mib
                    && t.vcpus + vm.vcpus <= t.vcpu_capacity
                    && vm
                        .targets
                        .get(&t.id)
                        .is_some_and(|free| *free >= vm.disk_gib)
                    && (t.used_mib + vm.memory_mib) / t.memory_mib <= mean + margin;
                if !fits {
                    continue;
                }
                let score = (vm.memory_mib - gap_mib).abs() + load(t) * 1e-3;
                if best.is_none_or(|(s, _, _)| score < s) {
                    best = Some((score, vi, ti));
                }
            }
        }
        let Some((_, vi, ti)) = best else {
            break;
        };
        let mut trial = hosts.clone();
        let vm = &vms[vi];
        trial[src].used_mib -= vm.memory_mib;
        trial[src].vcpus -= vm.vcpus;
        trial[ti].used_mib += vm.memory_mib;
        trial[ti].vcpus += vm.vcpus;
        if spread(&trial) >= before {
            break;
        }
        moves.push(Move {
            vm: vm.id,
            from: hosts[src].id,
            to: trial[ti].id,
        });
        let disk = vms[vi].disk_gib;
        if let Some(free) = vms[vi].targets.get_mut(&trial[ti].id) {
            *free -= disk;
        }
        vms[vi].host = trial[ti].id;
        hosts = trial;
    }
    (moves, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u128, used: f64) -> Host {
        Host {
            id: Uuid::from_u128(n),
            name: format!("hv{n}"),
            memory_mib: 1000.0,
            used_mib: used,
            vcpu_capacity: 64.0,
            vcpus: used / 100.0,
        }
    }

    fn vm(n: u128, on: u128, mib: f64, targets: &[u128]) -> Vm {
        Vm {
            id: Uuid::from_u128(100 + n),
            name: format!("vm{n}"),
            host: Uuid::from_u128(on),
            vcpus: 1.0,
            memory_mib: mib,
            disk_gib: 10.0,
            targets: targets
                .iter()
                .map(|t| (Uuid::from_u128(*t), 100.0))
                .collect(),
        }
    }

    #[test]
    fn moves_even_out_the_hosts_and_respect_where_images_are() {
        // hv1 at 90 %, hv2 at 10 %, hv3 at 20 %: mean 40 %.
        let hosts = vec![host(1, 900.0), host(2, 100.0), host(3, 200.0)];
        let vms = vec![
            vm(1, 1, 300.0, &[1, 2, 3]),
            vm(2, 1, 200.0, &[1, 3]),
            vm(3, 1, 400.0, &[1]),
        ];
        let (moves, after) = plan(hosts.clone(), vms, 0.1, 10);
        assert!(!moves.is_empty());
        assert!(spread(&after) < spread(&hosts), "{after:?}");
        // vm3's image is only on hv1: it stays.
        assert!(moves.iter().all(|m| m.vm != Uuid::from_u128(103)));
        // vm2 may only go to hv3.
        assert!(moves
            .iter()
            .filter(|m| m.vm == Uuid::from_u128(102))
            .all(|m| m.to == Uuid::from_u128(3)));
        assert!(after.iter().all(|h| h.used_mib <= h.memory_mib));
        // Balanced hosts: no advice.
        let (none, _) = plan(
            vec![host(1, 400.0), host(2, 420.0)],
            vec![vm(1, 1, 100.0, &[1, 2])],
            0.1,
            10,
        );
        assert!(none.is_empty());
    }
}
