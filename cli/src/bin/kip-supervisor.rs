//! `kip-supervisor`: the per-project supervisor daemon alone, the same as `kip supervisor --dir DIR` with only the
//! daemon linked in. kip starts it instead of itself when it is installed beside the `kip` binary (`cargo install`
//! installs both): a daemon that stays up as long as the project's engines keeps only its own code resident, not
//! the pages of every command it will never run. It takes kip's own spelling of the command line
//! (`supervisor --dir DIR`), which is also how kip's tests and `kip ps` recognise a supervisor.

#[path = "../logging.rs"]
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|arg| arg == "supervisor") {
        args.next();
    }
    let dir = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--dir" => PathBuf::from(dir),
        _ => {
            eprintln!(
                "usage: kip-supervisor --dir PROJECT/.kip\n\
                 (the per-project supervisor, started by `kip apply`; not for people to run)"
            );
            return ExitCode::from(2);
        }
    };
    // As kip's; the daemon's stderr is its log file, so no colour.
    logging::init(0, false);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the supervisor's runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kip_core::supervisor::run_daemon(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("caused by: {cause}");
                source = cause.source();
            }
            if let Some(hint) = error.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
