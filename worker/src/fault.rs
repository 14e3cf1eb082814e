//! Fault injection for the tests, by environment variable: each fault
//! named `VAR=STEP:FILE` fires once, in the first worker at step STEP (or,
//! with [`first_from_step`], from STEP on) to
//! create FILE (every worker of a test has the variable, since which one
//! the coordinator picks is its choice).

/// Whether fault `var` fires now, at step `step`.
pub fn first_at_step(var: &str, step: u64) -> bool {
    let Ok(v) = std::env::var(var) else { return false };
    let Some((s, file)) = v.split_once(':') else { return false };
    s.parse::<u64>().ok() == Some(step) && std::fs::OpenOptions::new().write(true).create_new(true).open(file).is_ok()
}

/// Whether fault `var` fires now, at step `step`: once, at the first step
/// at or after STEP (for faults whose step the test cannot know).
pub fn first_from_step(var: &str, step: u64) -> bool {
    let Ok(v) = std::env::var(var) else { return false };
    let Some((s, file)) = v.split_once(':') else { return false };
    s.parse::<u64>().is_ok_and(|s| step >= s) && std::fs::OpenOptions::new().write(true).create_new(true).open(file).is_ok()
}
