//! WireGuard keys: the node's X25519 private key in `<state_dir>/wireguard.key`
//! (base64, mode 0600, written by temp file + rename, never logged) and the
//! base64/hex encodings used by the datastore and the UAPI.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};

/// File name of the private key inside the state directory.
pub const KEY_FILE: &str = "wireguard.key";

/// Key file problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("wireguard key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a base64 32-byte key.
    #[error("wireguard key {path}: not a base64 32-byte key")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// A local key pair. `Debug` never shows the private half.
#[derive(Clone)]
pub struct KeyPair {
    /// The private key.
    pub secret: StaticSecret,
    /// The public key.
    pub public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyPair {{ public: {} }}",
            to_base64(self.public.as_bytes())
        )
    }
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Self::from_secret(rand::random::<[u8; 32]>())
    }

    /// The pair for a private key.
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The public key bytes.
    pub fn public_bytes(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }
}

/// Base64 of a key.
pub fn to_base64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A base64 32-byte key, or `None`.
pub fn from_base64(s: &str) -> Option<[u8; 32]> {
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    v.try_into().ok()
}

/// Lower-case hex of a key (the UAPI encoding).
pub fn to_hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads the key from `state_dir`, or generates and saves one.
pub fn load_or_generate(state_dir: &Path) -> Result<KeyPair, KeyError> {
    let path = state_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes =
                from_base64(&text).ok_or_else(|| KeyError::Malformed { path: path.clone() })?;
            // Tighten permissions if someone loosened them.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            Ok(KeyPair::from_secret(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = KeyPair::generate();
            save(state_dir, &kp)?;
            Ok(kp)
        }
        Err(source) => Err(KeyError::Io { path, source }),
    }
}

/// Saves `kp` as the node key (temp file with mode 0600, fsync, rename).
pub fn save(state_dir: &Path, kp: &KeyPair) -> Result<(), KeyError> {
    let path = state_dir.join(KEY_FILE);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let text = format!("{}\n", to_base64(&kp.secret.to_bytes()));
    crate::fsutil::write_atomic(&path, text.as_bytes(), Some(0o600)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_generated_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_generate(dir.path()).unwrap();
        assert_eq!(a.public_bytes(), b.public_bytes());
    }

    #[test]
    fn malformed_key_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "nope").unwrap();
        let e = load_or_generate(dir.path()).unwrap_err();
        assert!(e.to_string().contains("wireguard.key"), "{e}");
    }

    #[test]
    fn debug_does_not_show_the_private_key() {
        let kp = KeyPair::from_secret([7u8; 32]);
        let d = format!("{kp:?}");
        assert!(!d.contains(&to_base64(&[7u8; 32])));
        assert!(d.contains(&to_base64(&kp.public_bytes())));
    }
}
