//! A vault behind `cairn serve`, reached over HTTP(S) with a bearer token.
//!
//! The server decides what a token may do: an agent token may add objects
//! and read only the config, the wrapped keys and its own sources'
//! manifests and maps; it can never read chunk data, list the index,
//! overwrite or delete. This side speaks the object protocol and adds the
//! one thing a plain object store lacks: chunk negotiation (the client
//! sends chunk ids, the server answers which it lacks, and only those are
//! sealed and uploaded).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::hash::ChunkId;
use crate::http::Answer;
use std::io;
use std::time::{Duration, SystemTime};

/// Attempts per request (transport errors and 5xx answers are retried).
const ATTEMPTS: u32 = 4;
/// Largest answer read (a pack is tens of MiB).
const MAX_BODY: u64 = 1 << 30;
/// Chunk ids per negotiation request.
pub const NEGOTIATE_BATCH: usize = 4096;

#[derive(Clone, Debug)]
pub struct ServerLocation {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    pub token: String,
}

pub struct RemoteBackend {
    loc: ServerLocation,
    agent: ureq::Agent,
}

impl RemoteBackend {
    pub fn new(loc: ServerLocation) -> Result<RemoteBackend> {
        if !(loc.url.starts_with("http://") || loc.url.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "server URL {:?} must start with http:// or https://",
                loc.url
            )));
        }
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            // The server closes connections idle past its header timeout
            // (5 s at the least): one idle for 4 s is not reused, so no
            // upload goes out on a connection being closed.
            .max_idle_age(Duration::from_secs(4));
        // A server with a private certificate: trust the CA (or the
        // self-signed certificate) named by CAIRN_CA_CERT.
        if let Some(path) = std::env::var_os("CAIRN_CA_CERT") {
            let pem = std::fs::read(&path)
                .map_err(|e| Error::io(format!("reading CAIRN_CA_CERT {path:?}"), e))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Error::Invalid(format!(
                    "CAIRN_CA_CERT {path:?} holds no PEM certificate"
                )));
            }
            cfg = cfg.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(RemoteBackend {
            loc,
            agent: cfg.build().into(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.loc.url.trim_end_matches('/'))
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let url = self.url(path);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt));
            }
            match self.call_once(method, &url, body) {
                // 408: a body cut for coming too slowly (a busy link).
                Ok(a) if a.status >= 500 || a.status == 408 => {
                    last = format!("HTTP {}: {}", a.status, message(&a.body))
                }
                Ok(a) => return Ok(a),
                // Asking again cannot change a certificate: say what to
                // do about it at once.
                Err(e) if e.contains("certificate") => {
                    return Err(Error::io(
                        format!("{method} {url}"),
                        io::Error::other(format!("{e}: {}", certificate_hint(&e))),
                    ));
                }
                Err(e) => last = e,
            }
        }
        Err(Error::io(
            format!("{method} {url}"),
            io::Error::other(format!("{last} (after {ATTEMPTS} attempts)")),
        ))
    }

    fn call_once(
        &self,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> std::result::Result<Answer, String> {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {}", self.loc.token))
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .map_err(|e| e.to_string())?;
        let resp = self.agent.run(req).map_err(|e| e.to_string())?;
        Answer::read(resp, method == "HEAD", MAX_BODY).map_err(|e| e.to_string())
    }

    /// Whether this token may back up source `name`: None when the
    /// server does not say (one older than the question).
    pub fn may_back_up(&self, name: &str) -> Result<Option<bool>> {
        let source = crate::s3::uri_encode(name, false);
        let a = self.call("GET", &format!("whoami?source={source}"), b"")?;
        if a.status == 404 {
            return Ok(None);
        }
        if a.status != 200 {
            return Err(self.fail("GET whoami", &a));
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body)
            .map_err(|e| Error::Invalid(format!("{}: whoami: {e}", self.loc.url)))?;
        Ok(v["may_back_up"].as_bool())
    }

    fn fail(&self, what: &str, a: &Answer) -> Error {
        let kind = match a.status {
            404 => io::ErrorKind::NotFound,
            401 | 403 => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        Error::io(
            format!("{what} on {}", self.loc.url),
            io::Error::new(kind, format!("HTTP {}: {}", a.status, message(&a.body))),
        )
    }

    fn head(&self, name: &str) -> Result<Answer> {
        let a = self.call("HEAD", &format!("objects/{name}"), b"")?;
        if a.status != 200 {
            return Err(self.fail(&format!("HEAD {name}"), &a));
        }
        Ok(a)
    }
}

/// The server's error message (`{"error": "..."}`), or the raw text.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

impl Backend for RemoteBackend {
    fn put(&self, name: &str, data: &[u8]) -> Result<bool> {
        let a = self.call("PUT", &format!("objects/{name}"), data)?;
        match a.status {
            201 => Ok(true),
            200 => Ok(false),
            _ => Err(self.fail(&format!("storing {name}"), &a)),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let a = self.call("GET", &format!("objects/{name}"), b"")?;
        if a.status != 200 {
            return Err(self.fail(&format!("reading {name}"), &a));
        }
        Ok(a.body)
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let a = self.call(
            "GET",
            &format!("objects/{name}?offset={offset}&len={len}"),
            b"",
        )?;
        if a.status != 200 {
            return Err(self.fail(&format!("reading {name}"), &a));
        }
        Ok(a.body)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let a = self.call("GET", &format!("list/{dir}"), b"")?;
        if a.status != 200 {
            return Err(self.fail(&format!("listing {dir}"), &a));
        }
        serde_json::from_slice(&a.body)
            .map_err(|e| Error::Invalid(format!("listing {dir}: bad answer from server: {e}")))
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let a = self.call("HEAD", &format!("objects/{name}"), b"")?;
        match a.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.fail(&format!("HEAD {name}"), &a)),
        }
    }

    fn size(&self, name: &str) -> Result<u64> {
        let a = self.head(name)?;
        a.header("x-cairn-size")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("HEAD {name}: server sent no size")))
    }

    fn modified(&self, name: &str) -> Result<SystemTime> {
        let a = self.head(name)?;
        let secs: u64 = a
            .header("x-cairn-modified")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("HEAD {name}: server sent no time")))?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let a = self.call("DELETE", &format!("objects/{name}"), b"")?;
        if a.status / 100 != 2 {
            return Err(self.fail(&format!("deleting {name}"), &a));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("Cairn server {}", self.loc.url)
    }

    fn negotiates(&self) -> bool {
        true
    }

    fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Option<Vec<ChunkId>>> {
        let mut missing = Vec::new();
        for batch in ids.chunks(NEGOTIATE_BATCH) {
            let body: Vec<u8> = batch.iter().flat_map(|id| id.0).collect();
            let a = self.call("POST", "chunks/missing", &body)?;
            if a.status != 200 || !a.body.len().is_multiple_of(32) {
                return Err(self.fail("asking which chunks the vault lacks", &a));
            }
            missing.extend(
                a.body
                    .chunks_exact(32)
                    .map(|c| ChunkId(c.try_into().expect("32 bytes"))),
            );
        }
        Ok(Some(missing))
    }
}

/// What to do about a TLS certificate the client refused (rustls's reason
/// names the case).
fn certificate_hint(e: &str) -> &'static str {
    if e.contains("CaUsedAsEndEntity") {
        "the server presents a CA certificate as its own (`openssl req -x509` makes one by default): give it a certificate signed by that CA (basicConstraints=CA:FALSE), and CAIRN_CA_CERT the CA"
    } else if e.contains("UnknownIssuer") {
        "set CAIRN_CA_CERT to the CA certificate (PEM) that signed the server's certificate"
    } else if e.contains("NotValidForName") {
        "the certificate does not name the host in --server: use a name it was made for (its subjectAltName)"
    } else if e.contains("Expired") || e.contains("NotValidYet") {
        "the certificate is outside its validity dates (or a clock is wrong)"
    } else {
        "check the server's certificate and CAIRN_CA_CERT"
    }
}
