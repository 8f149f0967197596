//! Shared command-line plumbing: logging on stderr, version text.

use log::LevelFilter;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Log level from -v/-q counts and an optional explicit `--log-level`.
pub fn level(verbose: usize, quiet: usize, explicit: Option<&str>) -> Result<LevelFilter, String> {
    if let Some(name) = explicit {
        return name.parse::<LevelFilter>().map_err(|_| {
            format!("unknown log level {name:?} (off, error, warn, info, debug, trace)")
        });
    }
    let base: i32 = 3 + verbose as i32 - quiet as i32; // 3 = info
    Ok(match base {
        i32::MIN..=0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    })
}

/// Send logs to stderr (never stdout: the clients' stdout is for eval lines).
pub fn init_logging(level: LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}
