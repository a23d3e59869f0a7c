//! Tearing down the labs `veilctl lab test` is running when veilctl is
//! interrupted (SIGINT, SIGTERM, SIGHUP: Ctrl-C, `timeout`, a closed
//! terminal), so that an interrupted test leaves no namespaces behind.
//!
//! signal-hook's handler only records the signal; a watcher thread sees it, runs `lab down` for every lab in progress and exits with
//! 128 + the signal. Handlers, unlike blocked masks, are reset on `exec`, so
//! the daemons the lab starts keep the default disposition. SIGKILL cannot be
//! caught: `veilctl lab down --name <lab>` removes what is left then.

use std::collections::BTreeSet;
use std::sync::Mutex;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static CURRENT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Installs the handlers and the watcher thread (once per process).
pub(super) fn install() {
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot handle signals: {e}; an interrupted test may leave its lab");
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let labs = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
            for name in labs {
                eprintln!("interrupted: removing lab {name}");
                if let Err(e) = crate::lab::down::down(&name) {
                    eprintln!("error: lab down {name}: {e}");
                }
            }
            std::process::exit(128 + sig);
        }
    });
}

/// Records a lab in progress.
pub(super) fn add(lab: &str) {
    if let Ok(mut c) = CURRENT.lock() {
        c.insert(lab.to_string());
    }
}

/// Forgets a lab once it is down (or kept).
pub(super) fn remove(lab: &str) {
    if let Ok(mut c) = CURRENT.lock() {
        c.remove(lab);
    }
}
