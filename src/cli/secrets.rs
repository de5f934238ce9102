//! Reading passphrases and recovery keys: no-echo prompt, `--passfile`, `--extpass`.

use std::path::Path;
use std::process::Command;

use zeroize::Zeroizing;

use super::error::CliError;
use super::exit_code as code;
use crate::crypto::{Key256, Passphrase};
use crate::keymgr::{Unlock, parse_recovery_key};

/// Where a secret comes from.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    pub passfile: Option<std::path::PathBuf>,
    pub extpass: Option<String>,
}

fn input_err(m: impl Into<String>) -> CliError {
    CliError::new(code::PASSPHRASE_INPUT, m)
}

/// First line of `bytes`, without the line end.
fn first_line(bytes: &[u8]) -> Vec<u8> {
    let end = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let mut v = bytes[..end].to_vec();
    if v.last() == Some(&b'\r') {
        v.pop();
    }
    v
}

fn read_passfile(p: &Path) -> Result<Passphrase, CliError> {
    let b = Zeroizing::new(
        std::fs::read(p)
            .map_err(|e| input_err(format!("cannot read passfile {}: {e}", p.display())))?,
    );
    Ok(Passphrase::new(first_line(&b)))
}

fn run_extpass(cmd: &str) -> Result<Passphrase, CliError> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| input_err(format!("cannot run --extpass command: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(input_err(format!(
            "--extpass command failed ({})",
            out.status
        )));
    }
    Ok(Passphrase::new(first_line(&stdout)))
}

fn prompt(text: &str) -> Result<Passphrase, CliError> {
    let s = Zeroizing::new(rpassword::prompt_password(text).map_err(|e| {
        input_err(format!("cannot ask for the passphrase ({e})"))
            .hint("no terminal? use --passfile FILE or --extpass CMD")
    })?);
    Ok(Passphrase::new(s.as_bytes().to_vec()))
}

fn non_empty(p: Passphrase) -> Result<Passphrase, CliError> {
    if p.is_empty() {
        Err(input_err("the passphrase is empty"))
    } else {
        Ok(p)
    }
}

/// The unlock flags are global (accepted before and after the subcommand), and clap checks
/// their conflicts only among flags given on the same side.
fn conflict(given: &[(&str, bool)]) -> Result<(), CliError> {
    let set: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
    if set.len() > 1 {
        return Err(CliError::new(
            code::USAGE,
            format!("{} cannot be used together", set.join(" and ")),
        )
        .hint("give one way to unlock the volume"));
    }
    Ok(())
}

impl SecretSource {
    fn check(&self) -> Result<(), CliError> {
        conflict(&[
            ("--passfile", self.passfile.is_some()),
            ("--extpass", self.extpass.is_some()),
        ])
    }

    /// A passphrase for unlocking.
    pub fn passphrase(&self, what: &str) -> Result<Passphrase, CliError> {
        self.check()?;
        let p = match (&self.passfile, &self.extpass) {
            (Some(f), _) => read_passfile(f)?,
            (None, Some(c)) => run_extpass(c)?,
            (None, None) => prompt(&format!("{what}: "))?,
        };
        non_empty(p)
    }

    /// A new passphrase: from a file/command, or asked twice at the terminal.
    pub fn new_passphrase(&self, what: &str) -> Result<Passphrase, CliError> {
        self.check()?;
        if self.passfile.is_some() || self.extpass.is_some() {
            return self.passphrase(what);
        }
        let a = non_empty(prompt(&format!("{what}: "))?)?;
        let b = prompt(&format!("{what} (again): "))?;
        if a != b {
            return Err(input_err("the two passphrases differ"));
        }
        Ok(a)
    }
}

/// What unlocks a volume: a passphrase source or a recovery key (from a file or the terminal).
#[derive(Debug, Clone, Default)]
pub struct UnlockSource {
    pub secret: SecretSource,
    pub recovery_key: bool,
    pub recovery_key_file: Option<std::path::PathBuf>,
}

impl UnlockSource {
    pub fn get(&self) -> Result<Unlock, CliError> {
        conflict(&[
            ("--passfile", self.secret.passfile.is_some()),
            ("--extpass", self.secret.extpass.is_some()),
            ("--recovery-key", self.recovery_key),
            ("--recovery-key-file", self.recovery_key_file.is_some()),
        ])?;
        if let Some(f) = &self.recovery_key_file {
            let s = Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
                input_err(format!(
                    "cannot read recovery key file {}: {e}",
                    f.display()
                ))
            })?);
            return Ok(Unlock::RecoveryKey(parse_recovery(&s)?));
        }
        if self.recovery_key {
            let s = prompt("Recovery key")?;
            let text = String::from_utf8_lossy(s.expose()).into_owned();
            let text = Zeroizing::new(text);
            return Ok(Unlock::RecoveryKey(parse_recovery(&text)?));
        }
        Ok(Unlock::Passphrase(self.secret.passphrase("Passphrase")?))
    }
}

fn parse_recovery(s: &str) -> Result<Key256, CliError> {
    parse_recovery_key(s).ok_or_else(|| {
        input_err("malformed recovery key: expected 64 hex digits (dashes and spaces are ignored)")
    })
}
