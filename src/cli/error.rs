//! Errors the CLI reports: a message, an exit code and, where there is one, what to do next.

use super::exit_code as code;
use crate::format::config::ConfigError;
use crate::keymgr::VolumeError;

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

impl From<crate::keymgr::AdminError> for CliError {
    fn from(e: crate::keymgr::AdminError) -> Self {
        let c = match &e {
            crate::keymgr::AdminError::NotFound(_)
            | crate::keymgr::AdminError::NoRule(_)
            | crate::keymgr::AdminError::NoGrant(_) => code::NOT_FOUND,
            // The disk refused the write: an I/O error (1), not a refused request.
            crate::keymgr::AdminError::Persist(_) => code::ERROR,
            _ => code::INVALID_REQUEST,
        };
        CliError::new(c, e.to_string())
    }
}

impl From<VolumeError> for CliError {
    fn from(e: VolumeError) -> Self {
        let c = match &e {
            VolumeError::NotAVolume(_) => code::NOT_A_VOLUME,
            VolumeError::NotEmpty(_) => code::NOT_EMPTY,
            VolumeError::Config(
                ConfigError::UnsupportedVersion(_) | ConfigError::UnknownFeature(_),
            ) => code::UNSUPPORTED_VOLUME,
            VolumeError::Config(ConfigError::Format(_)) => code::CORRUPT,
            VolumeError::WrongPassphrase => code::WRONG_PASSPHRASE,
            VolumeError::KeyStoreCorrupt(_)
            | VolumeError::ConfigTampered
            | VolumeError::BackupCorrupt { .. } => code::CORRUPT,
            VolumeError::NewerBackup(_) => code::UNSUPPORTED_VOLUME,
            VolumeError::Refused(_) => code::INVALID_REQUEST,
            VolumeError::Kdf(_) | VolumeError::Io { .. } | VolumeError::Invalid(_) => code::ERROR,
        };
        let hint = match &e {
            VolumeError::WrongPassphrase => {
                Some("check the passphrase, or unlock with --recovery-key")
            }
            VolumeError::KeyStoreCorrupt(_) => Some(
                "restore a key-store backup with `kmsfs keystore restore CIPHERDIR FILE`, or \
                     .kmsfs/keystore from a backup of the cipher directory",
            ),
            VolumeError::BackupCorrupt { .. } => Some(
                "the volume's key store was not changed; restore from another copy of the backup",
            ),
            _ => None,
        };
        CliError {
            code: c,
            message: without_repeats(&e.to_string()),
            hint: hint.map(str::to_string),
        }
    }
}

/// `message` with later repeats of its leading clause left out: nested errors of one kind each
/// put their own words in front ("volume config: volume config: key must be a string", "key
/// store is damaged and no backup generation opens: primary: key store is damaged and no
/// backup generation opens: …").
fn without_repeats(message: &str) -> String {
    let Some((lead, rest)) = message.split_once(": ") else {
        return message.to_string();
    };
    let clause = format!("{lead}: ");
    format!("{clause}{}", rest.replace(&clause, ""))
}

#[cfg(test)]
mod tests {
    use super::without_repeats;

    #[test]
    fn a_repeated_leading_clause_is_said_once() {
        assert_eq!(
            without_repeats("volume config: volume config: key must be a string"),
            "volume config: key must be a string"
        );
        assert_eq!(
            without_repeats("damaged: primary: damaged: bad tag; backup: damaged: x: missing"),
            "damaged: primary: bad tag; backup: x: missing"
        );
        assert_eq!(without_repeats("a: b: c"), "a: b: c");
        assert_eq!(without_repeats("no clause"), "no clause");
    }
}
