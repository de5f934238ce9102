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
            crate::keymgr::AdminError::NotFound(_) => code::NOT_FOUND,
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
            VolumeError::KeyStoreCorrupt(_) | VolumeError::ConfigTampered => code::CORRUPT,
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
            _ => None,
        };
        CliError {
            code: c,
            message: e.to_string(),
            hint: hint.map(str::to_string),
        }
    }
}
