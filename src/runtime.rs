//! Process plumbing shared by the three binaries: logging set-up, the
//! shutdown signal (SIGTERM from Kubernetes, Ctrl-C from a person), and
//! errors as one line with their causes.

/// How log lines look on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, message, fields.
    #[default]
    Text,
    /// One JSON object per event for log collectors: `timestamp`, `level`,
    /// `target`, `message` and every field of the event as its own key.
    Json,
}

/// The logging flag every binary takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log format on stderr: text (for people) or json (one object per
    /// line, each event's fields as keys, for log collectors). The level
    /// is set with RUST_LOG, e.g. RUST_LOG=debug.
    #[arg(long, global = true, env = "DDPM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    pub fn init(&self) {
        init_tracing_as(self.log_format);
    }
}

/// Logs text to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_as(LogFormat::Text);
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

/// An error and its whole `source()` chain as one line, each cause once
/// (tonic's and object_store's errors say little at the top: the reason
/// is in the sources).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    text
}

/// What a new user would trip over in a command's `--help`, for the three
/// binaries' tests: a flag or argument without a help line, or a default
/// said twice (in the text and by clap).
pub fn cli_help_problems(cmd: &clap::Command) -> Vec<String> {
    let mut problems = Vec::new();
    let path = cmd.get_name().to_string();
    help_problems(cmd, &path, &mut problems);
    problems
}

fn help_problems(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" || arg.is_hide_set() {
            continue;
        }
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        if help.trim().is_empty() {
            out.push(format!("{path} --{id}: no help line"));
        }
        let shown_default = !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set();
        if shown_default && (help.contains("(default") || help.contains("[default")) {
            out.push(format!("{path} --{id}: the default is said twice (in the help text and by clap)"));
        }
    }
    for sub in cmd.get_subcommands() {
        help_problems(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

/// Keeps freed memory in the process rather than handing it back to the
/// kernel after each large free. Every step a worker and the coordinator
/// free and allocate again dozens of 4 MiB frames and gRPC messages; by
/// default glibc returns such blocks (`mmap` above 128 KiB to 32 MiB as it
/// adapts, and heap trimming), so the next allocation faults in and zeroes
/// fresh pages: a quarter of the ring's time in the profile
/// (docs/benchmarks.md). Blocks up to 32 MiB (glibc's largest threshold) now come
/// from the heap, which is trimmed only when 2 GiB lie free at its top. A
/// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the environment
/// wins. Call it first in `main`, before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |v: &str| std::env::var_os(v).is_none();
        // SAFETY: mallopt only changes glibc's allocation policy; called
        // before other threads allocate, and any value is valid to it.
        unsafe {
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            }
            if unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
            if unset("MALLOC_TOP_PAD_") {
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        }
    }
}
