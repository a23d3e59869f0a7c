//! What every `veilctl` command shares: the exit codes, the `--output`
//! format, port numbers as people write them, and the socket check that
//! turns "Connection refused" into what is wrong.
//!
//! Exit codes: [`OK`] (0), [`FAILED`] (1: a check failed, a daemon answered
//! an error or did not answer), [`USAGE`] (2: bad arguments, or what they
//! name does not exist: a lab, a file, a socket).

use std::path::Path;

/// Everything went as asked.
pub const OK: i32 = 0;
/// A check failed, or a daemon failed or did not answer.
pub const FAILED: i32 = 1;
/// Bad usage, or a named lab, file or socket does not exist.
pub const USAGE: i32 = 2;

/// `--output` of the commands that print text or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON.
    Json,
}

/// A port number, 1 to 65535 (clap value parser).
pub fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!(
            "{p} is not a port: expected a number from 1 to 65535"
        )),
        Err(_) => Err(format!(
            "{s:?} is not a port: expected a number from 1 to 65535"
        )),
    }
}

/// Why `path` cannot be veild's socket, before connecting to it: missing,
/// or not a socket.
pub fn check_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(m) if m.is_dir() => Err(format!(
            "{} is a directory, not veild's socket (pass the socket file, e.g. {})",
            path.display(),
            veil_api::DEFAULT_SOCKET
        )),
        Ok(_) => Err(format!(
            "{} is not a socket: is veild's socket elsewhere? (--socket PATH, or --lab NAME)",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "no veild socket at {}: is veild running on this node? (--socket PATH, or --lab NAME)",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "{}: permission denied (the socket is for root and its group)",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_1_to_65535_and_errors_say_so_in_words() {
        assert_eq!(port("80"), Ok(80));
        assert_eq!(port("65535"), Ok(65535));
        for bad in ["0", "65536", "-1", "http", ""] {
            let e = port(bad).unwrap_err();
            assert!(e.contains("from 1 to 65535"), "{e}");
            assert!(!e.contains("..="), "{e}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_named_as_such() {
        let e = check_socket(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
        assert!(!e.to_lowercase().contains("refused"), "{e}");
        let e = check_socket(Path::new("/nonexistent/veild.sock")).unwrap_err();
        assert!(e.contains("no veild socket"), "{e}");
        let e = check_socket(Path::new("/etc")).unwrap_err();
        assert!(e.contains("directory"), "{e}");
    }
}
