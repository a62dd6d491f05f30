//! Logging on stderr, shared by `kip` and `kip-supervisor` (which includes this file): `KIP_LOG` picks the level,
//! `-v`, `-vv`, `-vvv` override it.

pub fn init(verbose: u8, color: bool) {
    let from_env = std::env::var("KIP_LOG")
        .ok()
        .and_then(|level| level.parse::<tracing::Level>().ok());
    let level = match verbose {
        0 => from_env,
        1 => Some(tracing::Level::INFO),
        2 => Some(tracing::Level::DEBUG),
        _ => Some(tracing::Level::TRACE),
    };
    if let Some(level) = level {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(color)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
