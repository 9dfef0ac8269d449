//! Small pieces the commands share: secrets, sizes, durations, progress.

use anyhow::{Context, Result, bail};
use cairn_ingest::Progress;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The vault secret: `CAIRN_PASSWORD_FILE`, then `CAIRN_PASSWORD`, then a
/// prompt on the terminal.
pub fn password(confirm: bool) -> Result<Vec<u8>> {
    // (Set but empty counts as not set, as shells leave them.)
    if let Ok(path) = std::env::var("CAIRN_PASSWORD_FILE")
        && !path.is_empty()
    {
        let s =
            std::fs::read(&path).with_context(|| format!("reading CAIRN_PASSWORD_FILE {path}"))?;
        let s = s.strip_suffix(b"\n").unwrap_or(&s);
        return Ok(s.strip_suffix(b"\r").unwrap_or(s).to_vec());
    }
    if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set CAIRN_PASSWORD_FILE or CAIRN_PASSWORD, or run on a terminal");
    }
    let p = rpassword::prompt_password("vault password: ")?;
    if confirm && rpassword::prompt_password("again: ")? != p {
        bail!("the passwords differ");
    }
    Ok(p.into_bytes())
}

pub use cairn_vault::units::bytes;

/// The value of option `flag`, a duration as `30d` or `1y6mo` (see
/// [`cairn_vault::units::duration`]); a bad one is a usage error.
pub fn parse_duration(flag: &str, s: &str) -> Result<chrono::Duration> {
    cairn_vault::units::duration(s).map_err(|e| anyhow::Error::new(Usage(format!("{flag}: {e}"))))
}

/// A command line that asks for something no run can do (options that do
/// not go together, or do not apply to this kind of snapshot): exit 2,
/// like the errors clap finds, so scripts tell a mistake in the command
/// from a failure of the work.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns a [`Usage`] error, formatted like `bail!`.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::util::Usage(format!($($arg)*))))
    };
}

/// Draws a bar for `progress` on a terminal, nothing otherwise.
pub struct Bar {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    pub fn start(progress: Arc<Progress>, label: &'static str, quiet: bool) -> Bar {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if quiet || !std::io::stderr().is_terminal() {
            return Bar { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            pb.set_message(label);
            while !s.load(Ordering::Relaxed) {
                pb.set_length(progress.total.load(Ordering::Relaxed));
                pb.set_position(progress.done.load(Ordering::Relaxed));
                let written = progress.written.load(Ordering::Relaxed);
                if written > 0 {
                    pb.set_message(format!("{label} (wrote {})", HumanBytes(written)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            pb.finish_and_clear();
        });
        Bar {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Says how many restored files were left without their setuid or setgid
/// bits (see `cairn_recover::files::SETID`).
pub fn setid_warning(dropped: u64, named: &[String]) {
    if dropped == 0 {
        return;
    }
    const SHOWN: usize = 5;
    let mut list = named
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let shown = named.len().min(SHOWN) as u64;
    if dropped > shown {
        list.push_str(&format!(
            " and {} more{}",
            dropped - shown,
            if named.len() > SHOWN {
                " (--json names them)"
            } else {
                ""
            }
        ));
    }
    eprintln!(
        "warning: {dropped} file(s) restored without their setuid/setgid bits or file capabilities: {list} (a snapshot's program does not become a privileged one here; --keep-setid restores them)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
