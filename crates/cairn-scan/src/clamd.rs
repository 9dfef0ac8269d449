//! ClamAV as a second engine, when a `clamd` is configured
//! (`CAIRN_CLAMD=/run/clamav/clamd.ctl`, `unix:PATH` or `tcp:HOST:PORT`):
//! each file's bytes go to it over the INSTREAM command, and what it finds
//! is a hit like a YARA rule's (`clamav:SIGNATURE`). Its version (which
//! names the signature database's version) is part of the rule-set hash,
//! so a database update rescans.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::time::Duration;

/// Bytes sent per INSTREAM chunk.
const CHUNK: usize = 1 << 20;
/// Most bytes of one file sent, unless `CAIRN_CLAMD_MAX_BYTES` says: clamd
/// refuses a stream longer than its `StreamMaxLength` (25 MiB in its
/// sample configuration) with an error, which would make every snapshot
/// holding a large file (a swap file, a database) a warning. The head of
/// a large file is what ClamAV's signatures mostly look at.
const DEFAULT_MAX_BYTES: usize = 25 << 20;

fn max_bytes() -> usize {
    std::env::var("CAIRN_CLAMD_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_MAX_BYTES)
}
/// Longest answer read.
const MAX_ANSWER: u64 = 4096;

#[derive(Clone, Debug)]
enum Addr {
    Unix(std::path::PathBuf),
    Tcp(String),
}

pub struct Clamd {
    addr: Addr,
    /// What `VERSION` answered, e.g. `ClamAV 1.4.6/27440/Tue Nov 24 …`.
    pub version: String,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Clamd {
    /// Connects once to check the address and learn the version.
    pub fn connect(spec: &str) -> Result<Clamd> {
        let addr = if let Some(t) = spec.strip_prefix("tcp:") {
            Addr::Tcp(t.to_string())
        } else {
            Addr::Unix(spec.strip_prefix("unix:").unwrap_or(spec).into())
        };
        let mut c = Clamd {
            addr,
            version: String::new(),
        };
        c.version = c
            .command(b"zVERSION\0", &[])
            .map_err(|e| Error::Invalid(format!("clamd at {spec}: {e}")))?;
        Ok(c)
    }

    fn open(&self) -> std::io::Result<Box<dyn Stream>> {
        let timeout = Some(Duration::from_secs(120));
        Ok(match &self.addr {
            Addr::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                Box::new(s)
            }
            Addr::Tcp(a) => {
                let s = std::net::TcpStream::connect(a)?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                Box::new(s)
            }
        })
    }

    /// Sends a command (and, for INSTREAM, the data); the answer up to
    /// its terminating NUL.
    fn command(&self, cmd: &[u8], data: &[u8]) -> std::result::Result<String, String> {
        let mut s = self.open().map_err(|e| e.to_string())?;
        let send = |s: &mut Box<dyn Stream>| -> std::io::Result<()> {
            s.write_all(cmd)?;
            if cmd.starts_with(b"zINSTREAM") {
                for piece in data.chunks(CHUNK) {
                    s.write_all(&(piece.len() as u32).to_be_bytes())?;
                    s.write_all(piece)?;
                }
                s.write_all(&0u32.to_be_bytes())?;
            }
            s.flush()
        };
        send(&mut s).map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .map_err(|e| e.to_string())?;
        let end = answer.iter().position(|&b| b == 0).unwrap_or(answer.len());
        Ok(String::from_utf8_lossy(&answer[..end]).trim().to_string())
    }

    /// The signature that matched `data`, if one did.
    pub fn scan(&self, data: &[u8]) -> std::result::Result<Option<String>, String> {
        let data = &data[..data.len().min(max_bytes())];
        let answer = self.command(b"zINSTREAM\0", data)?;
        let body = answer.strip_prefix("stream:").unwrap_or(&answer).trim();
        if body == "OK" {
            Ok(None)
        } else if let Some(sig) = body.strip_suffix(" FOUND") {
            Ok(Some(sig.to_string()))
        } else {
            Err(body.to_string())
        }
    }
}
