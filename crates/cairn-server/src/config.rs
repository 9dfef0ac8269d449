//! The server's config file (TOML):
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//! tls_cert = "/etc/cairn/cert.pem"    # both, or neither (plain HTTP)
//! tls_key = "/etc/cairn/key.pem"
//! webhook = "https://chat.example/hooks/cairn"   # POSTed on suspicious or compromised
//! export_host = "10.0.0.5"   # where console NBD exports listen (default 127.0.0.1)
//! restore_dir = "/srv/restores"   # where the API's restores write (none: refused)
//! max_connections = 1024   # served at once; more wait (default 1024)
//! max_connections_per_address = 256   # one client address at most; more get 503
//! header_timeout = 30      # seconds a client has for a TLS handshake or a
//!                          # request's headers, idle or not (default 30, at least 5)
//! agent_upload_per_day = "500G"   # new bytes one agent token may store in
//!                          # any 24 hours (K, M, G, T; default: no limit)
//!
//! [boot]                # the console's boot check (as `cairn boot` takes it)
//! kernel = "/srv/cairn/vmlinuz"   # optional: without, the disk's own bootloader
//! initrd = "/srv/cairn/initrd.img"
//! expect = "login:"     # or probe = 22 with network = "restricted"
//! timeout = 120
//!
//! [[source]]
//! name = "web01"
//! path = "/var/lib/libvirt/images/web01.qcow2"
//! every = "30m"        # s, m, h or d
//! keep_last = 48       # forget older ones after each backup (never pinned ones)
//! scan = true          # scan each new snapshot
//! ```

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub webhook: Option<String>,
    /// Address exports started from the console listen on (default
    /// 127.0.0.1; each export gets a free port).
    pub export_host: Option<String>,
    /// The only folder restores started through the API write into (a
    /// new file there, named by the request): an operator token must not
    /// be a way to write any path the server can.
    pub restore_dir: Option<PathBuf>,
    /// Connections served at once (default 1024); more wait to be accepted.
    pub max_connections: Option<usize>,
    /// Connections one client address may hold at once (default 256);
    /// past it a new one gets 503 and is closed.
    pub max_connections_per_address: Option<usize>,
    /// Seconds a connection may take for its TLS handshake and for each
    /// request's headers, and may sit idle between requests (default 30):
    /// clients that open connections and send nothing would otherwise
    /// hold every place.
    pub header_timeout: Option<u64>,
    /// New bytes one agent token may store in any 24 hours ("500G"): a
    /// compromised host could otherwise fill the vault's disk with junk
    /// that no prune may remove before its retention ends.
    pub agent_upload_per_day: Option<String>,
    /// How the console's boot check boots a snapshot and judges it.
    pub boot: Option<BootConfig>,
    #[serde(default)]
    pub source: Vec<Policy>,
}

/// `[boot]`: the isolated environment's settings (as `cairn boot` takes
/// them). Without a kernel the disk boots through its own bootloader.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub memory: Option<String>,
    /// `none` (default) or `restricted` (user networking, no route out).
    pub network: Option<String>,
    /// Console text that means the boot worked.
    pub expect: Option<String>,
    /// Guest TCP port that answers when the boot worked (needs restricted).
    pub probe: Option<u16>,
    pub timeout: Option<u64>,
}

impl BootConfig {
    pub fn options(&self) -> cairn_expose::boot::BootOptions {
        cairn_expose::boot::BootOptions {
            overlay: None,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            append: self
                .append
                .clone()
                .unwrap_or_else(|| "console=ttyS0".into()),
            memory: self.memory.clone().unwrap_or_else(|| "512M".into()),
            network: self.network.clone().unwrap_or_else(|| "none".into()),
            expect: self.expect.clone(),
            probe: self.probe,
            timeout: self.timeout.unwrap_or(120),
            log: None,
        }
    }
}

/// A source the server backs up itself, on a schedule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub path: PathBuf,
    pub every: String,
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub scan: bool,
}

impl Policy {
    pub fn interval(&self) -> Result<Duration> {
        parse_interval(&self.every).with_context(|| format!("source {}: every", self.name))
    }
}

pub fn parse_interval(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .trim()
        .parse()
        .with_context(|| format!("{s:?}: use a number and s, m, h or d (e.g. 30m)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("{s:?}: use a number and s, m, h or d (e.g. 30m)"),
    };
    if secs == 0 {
        bail!("{s:?}: the interval must be more than zero");
    }
    Ok(Duration::from_secs(secs))
}

/// A size as "500G": a number and an optional K, M, G or T (powers of
/// 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (
            &s[..i],
            match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("{s:?}: the unit is K, M, G or T"),
            },
        ),
        _ => (s, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a size like 500G"))?;
    n.checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .with_context(|| format!("{s:?}: a size above zero and below 16 EiB"))
}

impl ServerConfig {
    /// [`Self::agent_upload_per_day`] in bytes (checked when loaded).
    pub fn agent_quota(&self) -> Option<u64> {
        self.agent_upload_per_day
            .as_deref()
            .and_then(|q| parse_size(q).ok())
    }

    pub fn load(path: &Path) -> Result<ServerConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: ServerConfig =
            toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        for p in &c.source {
            p.interval()?;
        }
        if c.max_connections_per_address == Some(0) {
            bail!(
                "{}: max_connections_per_address must be more than zero",
                path.display()
            );
        }
        if c.max_connections.is_some_and(|n| n == 0 || n > 100_000) {
            bail!(
                "{}: max_connections must be from 1 to 100000",
                path.display()
            );
        }
        // Agents drop connections idle for 4 s (see the vault's remote
        // backend), so none reuses one the server is closing.
        if c.header_timeout.is_some_and(|t| t < 5) {
            bail!(
                "{}: header_timeout must be 5 seconds or more",
                path.display()
            );
        }
        if let Some(q) = &c.agent_upload_per_day {
            parse_size(q).with_context(|| format!("{}: agent_upload_per_day", path.display()))?;
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            bail!(
                "{}: give both tls_cert and tls_key, or neither",
                path.display()
            );
        }
        // Read now, so that a server that cannot serve says so before it
        // prints an address to connect to.
        for (what, file) in [("tls_cert", &c.tls_cert), ("tls_key", &c.tls_key)] {
            if let Some(f) = file {
                std::fs::File::open(f)
                    .with_context(|| format!("{}: {what} {}", path.display(), f.display()))?;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_interval("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500G").unwrap(), 500 << 30);
        assert_eq!(parse_size("2t").unwrap(), 2 << 40);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "0", "G", "5X", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
