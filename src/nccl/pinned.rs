//! The NCCL settings every replica must share: the all-reduce's algorithm
//! and protocol. NCCL picks them per call from the message size and the
//! topology it detects, and each reduces in its own order, so two members
//! could get different bits of the same sum; pinned (`NCCL_ALGO=Ring`,
//! `NCCL_PROTO=Simple`), every rank of a communicator runs the same ring
//! with the same chunking and, after the all-gather, holds the owner's
//! bits: what the per-step checksums check. NCCL reads them when a
//! communicator is made, so a worker sets them at its start, before any
//! thread exists (setting the environment later would race other threads'
//! reads of it).

/// The variables and the values ddpm runs NCCL with.
pub const PINNED: [(&str, &str); 2] = [("NCCL_ALGO", "Ring"), ("NCCL_PROTO", "Simple")];

/// What to set, given the current environment (`get`): each pinned
/// variable whose value differs, with the value it had (to warn about).
pub fn to_set(get: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, &'static str, Option<String>)> {
    PINNED
        .iter()
        .filter_map(|&(var, value)| match get(var) {
            Some(v) if v == value => None,
            old => Some((var, value, old)),
        })
        .collect()
}

/// Sets the pinned variables in this process (and so in its children);
/// returns those it changed from another value, for a warning.
///
/// Call it before the process starts any thread: the environment is not
/// safe to change while another thread may read it.
pub fn pin_collectives() -> Vec<(&'static str, &'static str, String)> {
    let mut overridden = Vec::new();
    for (var, value, old) in to_set(|v| std::env::var(v).ok()) {
        std::env::set_var(var, value);
        if let Some(old) = old {
            overridden.push((var, value, old));
        }
    }
    overridden
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_differs_is_set_and_a_users_other_value_is_reported() {
        let env = |v: &str| match v {
            "NCCL_ALGO" => Some("Tree".to_string()),
            "NCCL_PROTO" => Some("Simple".to_string()),
            _ => None,
        };
        assert_eq!(to_set(env), vec![("NCCL_ALGO", "Ring", Some("Tree".to_string()))]);
        assert_eq!(to_set(|_| None).len(), 2);
    }
}
