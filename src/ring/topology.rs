//! Ring order by host: each node's members next to each other, so that a
//! ring over H hosts crosses the network H times (once out of each host)
//! whatever order the members joined in. Join order alone interleaves them
//! (node A's worker, node B's, node A's, ...) and every hop may cross: 2N
//! network hops per round instead of 2 for two nodes of N workers. Members
//! that are neighbours on one host also share its `/dev/shm`, so their link
//! can be shared memory (`links.rs`) instead of TCP.
//!
//! The same order serves NCCL's ranks: NCCL builds its own rings from the
//! topology it detects, but a rank order that follows the hosts is what its
//! defaults and its users (torchrun's node ranks) assume.
//!
//! Pure functions, no I/O: the coordinator's roster calls [`order_by_host`]
//! with a ring step's members (in their rank order so far: join order) and
//! the result is their ranks (`Roster::ring_order`).

use std::net::IpAddr;

/// One member as the ordering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed<'a> {
    /// The worker id (the roster's; ids grow with join order).
    pub id: u64,
    /// The member's ring endpoint, `HOST:PORT` (`[v6]:PORT` for IPv6), as
    /// it registered it; empty when it has none.
    pub endpoint: &'a str,
    /// A host identity the worker reports, when there is one (e.g. the
    /// Kubernetes node name): it wins over the endpoint's host, which
    /// cannot tell two pods of one node apart (each has its own IP).
    pub host: Option<&'a str>,
}

/// The key members are grouped by: the reported host identity, else the
/// endpoint's host, with every loopback form (`127.x.y.z`, `::1`,
/// `localhost`) as one host (two machines can never both dial each other
/// at a loopback address, so such members share a machine). A member with
/// neither gets a key of its own: nothing says it shares a host.
pub fn host_key(member: &Placed<'_>) -> String {
    if let Some(h) = member.host.map(str::trim).filter(|h| !h.is_empty()) {
        return format!("id:{}", h.to_ascii_lowercase());
    }
    match endpoint_host(member.endpoint) {
        Some(h) if is_loopback(h) => "ip:loopback".into(),
        // Parsed, so that one address has one spelling (fd00:0::1 is fd00::1).
        Some(h) => format!("ip:{}", h.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or_else(|_| h.to_ascii_lowercase())),
        None => format!("member:{}", member.id),
    }
}

/// The host of `HOST:PORT` or `[V6]:PORT`, without brackets; `None` for
/// anything else (an empty endpoint, no port).
fn endpoint_host(endpoint: &str) -> Option<&str> {
    let (host, port) = endpoint.trim().rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The members' ids in ring order: grouped by host ([`host_key`]), hosts in
/// the order their first member appears in `members`, and within a host
/// the order of `members` (join order, stable from step to step). One host:
/// `members`' own order, unchanged.
pub fn order_by_host(members: &[Placed<'_>]) -> Vec<u64> {
    let keys: Vec<String> = members.iter().map(host_key).collect();
    let mut hosts: Vec<&str> = Vec::new();
    for k in &keys {
        if !hosts.contains(&k.as_str()) {
            hosts.push(k);
        }
    }
    hosts.iter().flat_map(|h| members.iter().zip(&keys).filter(move |(_, k)| k.as_str() == *h).map(|(m, _)| m.id)).collect()
}

/// How many of a ring's hops go from one host to another (member i sends
/// to member i + 1, the last to the first): 0 on one host, else at least
/// the number of hosts, exactly that when [`order_by_host`] ordered it.
pub fn network_crossings(ring: &[Placed<'_>]) -> usize {
    let n = ring.len();
    if n < 2 {
        return 0;
    }
    let keys: Vec<String> = ring.iter().map(host_key).collect();
    (0..n).filter(|&i| keys[i] != keys[(i + 1) % n]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(spec: &[(u64, &'static str)]) -> Vec<Placed<'static>> {
        spec.iter().map(|&(id, endpoint)| Placed { id, endpoint, host: None }).collect()
    }

    fn in_order<'a>(members: &[Placed<'a>], ids: &[u64]) -> Vec<Placed<'a>> {
        ids.iter().map(|id| members.iter().find(|m| m.id == *id).unwrap().clone()).collect()
    }

    #[test]
    fn two_hosts_of_four_joined_interleaved_cross_the_network_twice() {
        // Join order alternates the nodes: every hop crosses.
        let m = placed(&[
            (1, "10.0.0.1:9092"),
            (2, "10.0.0.2:9092"),
            (3, "10.0.0.1:9093"),
            (4, "10.0.0.2:9093"),
            (5, "10.0.0.1:9094"),
            (6, "10.0.0.2:9094"),
            (7, "10.0.0.1:9095"),
            (8, "10.0.0.2:9095"),
        ]);
        assert_eq!(network_crossings(&m), 8);
        let ring = order_by_host(&m);
        assert_eq!(ring, vec![1, 3, 5, 7, 2, 4, 6, 8]);
        assert_eq!(network_crossings(&in_order(&m, &ring)), 2);
    }

    #[test]
    fn three_hosts_cross_three_times_and_keep_join_order_within_a_host() {
        let m = placed(&[(9, "b:1"), (2, "a:1"), (5, "c:1"), (3, "b:2"), (4, "a:2"), (1, "c:2")]);
        let ring = order_by_host(&m);
        // Hosts in order of their first member (b, a, c); within each, the given order.
        assert_eq!(ring, vec![9, 3, 2, 4, 5, 1]);
        assert_eq!(network_crossings(&in_order(&m, &ring)), 3);
    }

    #[test]
    fn one_host_keeps_the_order_it_was_given() {
        let m = placed(&[(4, "127.0.0.1:5000"), (1, "localhost:5001"), (2, "[::1]:5002"), (3, "127.0.0.2:5003")]);
        assert_eq!(order_by_host(&m), vec![4, 1, 2, 3], "every loopback form is one host");
        assert_eq!(network_crossings(&m), 0);
        assert_eq!(order_by_host(&[]), Vec::<u64>::new());
        assert_eq!(network_crossings(&m[..1]), 0);
    }

    #[test]
    fn a_reported_host_identity_wins_over_the_endpoint() {
        // One pod per GPU: each pod its own IP, two nodes.
        let mut m = placed(&[(1, "10.1.0.5:9092"), (2, "10.1.1.7:9092"), (3, "10.1.0.6:9092"), (4, "10.1.1.8:9092")]);
        for (member, node) in m.iter_mut().zip(["node-a", "node-b", "Node-A", "node-b"]) {
            member.host = Some(node);
        }
        assert_eq!(order_by_host(&m), vec![1, 3, 2, 4]);
        assert_eq!(network_crossings(&in_order(&m, &order_by_host(&m))), 2);
    }

    #[test]
    fn ipv6_hosts_group_and_members_without_endpoints_stand_alone() {
        let m = placed(&[(1, "[fd00::1]:9092"), (2, ""), (3, "[FD00:0::1]:9093"), (4, "no-port"), (5, "[fd00::2]:1")]);
        assert_eq!(host_key(&m[0]), host_key(&m[2]));
        assert_ne!(host_key(&m[1]), host_key(&m[3]), "nothing says two endpoint-less members share a host");
        assert_eq!(order_by_host(&m), vec![1, 3, 2, 4, 5]);
    }
}
