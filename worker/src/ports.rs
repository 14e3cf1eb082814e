//! Each `--gpus` child's own ports, from the parent's `--metrics-listen`,
//! `--peer-listen` and `--peer-advertise` ([`PortPlan`]), and the refusal
//! of flags that cannot give every process its own ([`PortError`]).

use std::net::{AddrParseError, SocketAddr};

/// Port flags that no worker process, or not this many, can listen with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PortError {
    #[error("--metrics-listen {listen:?}: {source}; give IP:PORT")]
    MetricsUnreadable { listen: String, source: AddrParseError },
    #[error("--peer-listen {0:?}: give IP:PORT (port 0: any free one) or off")]
    PeerUnreadable(String),
    #[error("--metrics-listen {metrics} and --peer-listen {peer} are the same port: give them different ports")]
    SamePort { metrics: String, peer: String },
    #[error(
        "{n} worker processes need {n} metrics ports from --metrics-listen {metrics} and {n} peer ports from --peer-listen {peer} \
         (each child k takes port + k), but only {fit} fit before the two ranges meet or pass 65535: \
         put the peer port at least {n} away from the metrics port (e.g. --metrics-listen=0.0.0.0:9091 --peer-listen=0.0.0.0:9100 for up to 9)"
    )]
    TooMany { n: usize, fit: usize, metrics: String, peer: String },
}

/// The ports of one child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPorts {
    /// `--metrics-listen` (none: the parent has no metrics port).
    pub metrics: Option<String>,
    /// `--peer-listen` (an address, or "off").
    pub peer_listen: String,
    /// `--peer-advertise` (none: the parent advertises nothing explicit).
    pub peer_advertise: Option<String>,
}

/// The rule that gives each child its own ports, from the parent's flags:
/// child k (its position in `--gpus`, from 0) listens for metrics on the
/// `--metrics-listen` port + k and for ring neighbours on the
/// `--peer-listen` port + k (an explicit `--peer-advertise` port + k too);
/// port 0 stays 0 (each child picks a free one) and `off` stays off. Two
/// children can then never share a port of one kind; the two ranges must
/// not overlap either, which [`PortPlan::check`] refuses before any child
/// starts (with `--metrics-listen=0.0.0.0:9091 --peer-listen=0.0.0.0:9092`,
/// child 1's metrics port would be child 0's peer port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    metrics: Option<SocketAddr>,
    /// None: `--peer-listen off`.
    peer: Option<SocketAddr>,
    /// `--peer-advertise`: the host, and its port if it has one.
    advertise: Option<(String, Option<u16>)>,
}

impl PortPlan {
    /// Reads the three flags; an address that does not parse is an error naming its flag.
    pub fn parse(metrics_listen: Option<&str>, peer_listen: &str, peer_advertise: Option<&str>) -> Result<Self, PortError> {
        let metrics = metrics_listen
            .map(|m| m.parse::<SocketAddr>().map_err(|source| PortError::MetricsUnreadable { listen: m.to_string(), source }))
            .transpose()?;
        let peer = match peer_listen {
            "off" => None,
            p => Some(p.parse::<SocketAddr>().map_err(|_| PortError::PeerUnreadable(p.to_string()))?),
        };
        let advertise = peer_advertise.filter(|a| !a.is_empty()).map(|a| match a.rsplit_once(':') {
            // A bare IPv6 address ends in a group, not a port: "[v6]:PORT" has the port after "]".
            Some((h, p)) if !a.ends_with(']') && (!h.contains(':') || h.ends_with(']')) => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), Some(p)),
                Err(_) => (a.to_string(), None),
            },
            _ => (a.to_string(), None),
        });
        Ok(Self { metrics, peer, advertise })
    }

    /// How many children these ports fit (`usize::MAX`: any number, every
    /// port 0): each fixed range must stay within 65535, and the metrics and
    /// peer ranges of addresses that can collide (the same IP, or either
    /// unspecified) must stay apart, so at most |peer - metrics| children.
    pub fn capacity(&self) -> usize {
        let fixed = |a: &Option<SocketAddr>| a.filter(|a| a.port() != 0);
        let mut cap = usize::MAX;
        for a in [fixed(&self.metrics), fixed(&self.peer)].into_iter().flatten() {
            cap = cap.min(65536 - usize::from(a.port()));
        }
        if let Some(p) = self.advertise.as_ref().and_then(|(_, p)| *p).filter(|p| *p != 0) {
            cap = cap.min(65536 - usize::from(p));
        }
        if let (Some(m), Some(p)) = (fixed(&self.metrics), fixed(&self.peer)) {
            if m.ip() == p.ip() || m.ip().is_unspecified() || p.ip().is_unspecified() {
                cap = cap.min(usize::from(m.port().abs_diff(p.port())));
            }
        }
        cap
    }

    /// Refuses `n` processes (1: a single worker) that these ports do not fit, saying which flags to change.
    pub fn check(&self, n: usize) -> Result<(), PortError> {
        let fit = self.capacity();
        if n <= fit {
            return Ok(());
        }
        let show = |a: &Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        let (metrics, peer) = (show(&self.metrics), show(&self.peer));
        Err(match fit {
            0 => PortError::SamePort { metrics, peer },
            _ => PortError::TooMany { n, fit, metrics, peer },
        })
    }

    /// Child `index`'s ports (after [`PortPlan::check`] passed for more than `index` children).
    pub fn child(&self, index: usize) -> ChildPorts {
        let shift = |a: SocketAddr| {
            let mut a = a;
            if a.port() != 0 {
                a.set_port(a.port() + index as u16);
            }
            a.to_string()
        };
        ChildPorts {
            metrics: self.metrics.map(shift),
            peer_listen: self.peer.map_or_else(|| "off".to_string(), shift),
            peer_advertise: self.advertise.as_ref().map(|(h, p)| match p {
                Some(p) if *p != 0 => format!("{h}:{}", p + index as u16),
                Some(p) => format!("{h}:{p}"),
                None => h.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_stays_zero_and_off_stays_off() {
        // Every child asks the kernel for a free one.
        let any = PortPlan::parse(Some("127.0.0.1:0"), "0.0.0.0:0", None).unwrap();
        assert_eq!(any.capacity(), usize::MAX);
        assert_eq!(any.child(5).peer_listen, "0.0.0.0:0");
        assert_eq!(any.child(5).metrics.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(PortPlan::parse(None, "off", None).unwrap().child(3).peer_listen, "off");
    }

    #[test]
    fn ranges_that_would_meet_are_refused_before_any_child_starts() {
        // The shipped manifests' single-GPU ports: fine for one process, not for two.
        let shipped = PortPlan::parse(Some("0.0.0.0:9091"), "0.0.0.0:9092", None).unwrap();
        shipped.check(1).unwrap();
        let e = shipped.check(2).unwrap_err();
        assert!(matches!(e, PortError::TooMany { n: 2, fit: 1, .. }), "{e}");
        assert!(e.to_string().contains("--peer-listen"), "{e}");
        let same = PortPlan::parse(Some("0.0.0.0:9091"), "127.0.0.1:9091", None).unwrap();
        assert!(matches!(same.check(1), Err(PortError::SamePort { .. })));
        // Different specific IPs cannot collide; the top of the port space still bounds.
        let apart = PortPlan::parse(Some("127.0.0.1:9091"), "10.0.0.1:9092", None).unwrap();
        apart.check(8).unwrap();
        let top = PortPlan::parse(Some("0.0.0.0:65534"), "off", None).unwrap();
        top.check(2).unwrap();
        assert!(top.check(3).is_err());
        assert!(PortPlan::parse(Some("nope"), "off", None).unwrap_err().to_string().contains("--metrics-listen"));
        assert!(PortPlan::parse(None, "0.0.0.0", None).unwrap_err().to_string().contains("--peer-listen"));
    }

    #[test]
    fn advertised_ports_shift_and_ipv6_hosts_keep_their_groups() {
        let v6 = PortPlan::parse(None, "[::]:9100", Some("[fd00::5]:7000")).unwrap();
        assert_eq!(v6.child(2).peer_advertise.as_deref(), Some("[fd00::5]:7002"));
        assert_eq!(v6.child(2).peer_listen, "[::]:9102");
        let bare_v6 = PortPlan::parse(None, "off", Some("fd00::5")).unwrap();
        assert_eq!(bare_v6.child(1).peer_advertise.as_deref(), Some("fd00::5"));
    }
}
