//! The `veil` binary: connects [`veil_cni::execute`] to the process's
//! environment, stdin, stdout and the kernel, and sets up logging (stderr, or
//! the configuration's `logFile`; filter from `VEIL_LOG`, then `RUST_LOG`,
//! default `info`).

use std::collections::BTreeMap;
use std::io::Read;

use veil_cni::netlink::LinuxLinks;

fn log_file(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()?
        .get("logFile")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn init_logging(stdin: &[u8]) {
    let filter = std::env::var("VEIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let file = log_file(stdin).and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn main() {
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin).map(|_| ());
    init_logging(&stdin);
    let mut stdout = std::io::stdout().lock();
    let code = match read {
        Ok(()) => veil_cni::execute(&vars, &stdin, &mut stdout, &mut LinuxLinks::new()),
        Err(e) => {
            let err = veil_cni::CniError::Io(e);
            let obj = err.to_json(veil_cni::version::Version::LATEST.as_str());
            use std::io::Write;
            let _ = writeln!(stdout, "{obj}");
            1
        }
    };
    std::process::exit(code);
}
