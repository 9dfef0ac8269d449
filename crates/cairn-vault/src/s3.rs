//! The vault on S3-compatible object storage with Object Lock: every
//! object is written once (put-if-absent) with a compliance-mode retention
//! until the vault's retention plus a margin, so nothing — not even a
//! stolen admin key — can change or destroy it before then.
//!
//! A small client of our own: AWS Signature V4 over `ureq`, path-style
//! addresses, XML answers read with `roxmltree`. The vault's `Backend`
//! interface is synchronous and needs eight operations; the lock headers
//! are three plain headers (mode, retain-until, Content-MD5).

use crate::backend::Backend;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Retention added to the vault's own, so a clock difference or a slow
/// prune never lets a referenced object's lock run out.
pub const SAFETY_MARGIN_SECS: i64 = 7 * 86400;

/// The margin in use: [`SAFETY_MARGIN_SECS`], or `CAIRN_S3_LOCK_MARGIN_SECS`
/// (tests shorten it to watch a lock being renewed).
pub fn lock_margin_secs() -> i64 {
    std::env::var("CAIRN_S3_LOCK_MARGIN_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map(|v| v.max(0))
        .unwrap_or(SAFETY_MARGIN_SECS)
}
/// How long a store may take to start answering a request
/// (`CAIRN_S3_ANSWER_SECS`, default a minute).
fn answer_secs() -> u64 {
    std::env::var("CAIRN_S3_ANSWER_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|v| v.max(1))
        .unwrap_or(60)
}
/// Largest object read into memory (packs are tens of MiB).
const MAX_BODY: u64 = 1 << 30;
const ATTEMPTS: u32 = 5;
/// Objects larger than this are uploaded in parts (of `PART_SIZE`).
const MULTIPART_ABOVE: usize = 32 << 20;
const PART_SIZE: usize = 16 << 20;

/// Where the bucket is and how to sign for it.
#[derive(Clone, Debug)]
pub struct S3Location {
    /// `https://s3.eu-west-1.amazonaws.com` or an S3-compatible endpoint.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix of the vault inside the bucket (no leading or trailing
    /// slash; may be empty).
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

/// S3's rules for bucket names (general purpose buckets), checked before
/// any request so that a typo is said at once, not as the store's 400.
fn valid_bucket_name(b: &str) -> bool {
    let bytes = b.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && bytes.iter().all(|&c| edge(c) || c == b'-' || c == b'.')
        && edge(bytes[0])
        && edge(bytes[b.len() - 1])
        && !b.contains("..")
        && !b.contains(".-")
        && !b.contains("-.")
        && b.parse::<std::net::Ipv4Addr>().is_err()
        && !b.starts_with("xn--")
        && !b.starts_with("sthree-")
        && !b.ends_with("-s3alias")
        && !b.ends_with("--ol-s3")
}

impl S3Location {
    /// `s3://BUCKET/PREFIX`, with endpoint, region and credentials from
    /// the standard AWS environment variables, then `~/.aws/credentials`
    /// and `~/.aws/config` (profile `AWS_PROFILE` or `default`).
    pub fn from_url(url: &str) -> Result<S3Location> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("{url}: an S3 vault is s3://BUCKET/PREFIX")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket_name(bucket) {
            return Err(Error::Invalid(format!(
                "{bucket:?} is not a valid bucket name (3-63 lower-case letters, digits, dots and hyphens, beginning and ending with a letter or digit, no two dots in a row, not an IP address)"
            )));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = env("HOME").unwrap_or_default();
        let creds = ini_section(
            &env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or(format!("{home}/.aws/credentials")),
            &profile,
        );
        let conf = ini_section(
            &env("AWS_CONFIG_FILE").unwrap_or(format!("{home}/.aws/config")),
            &if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            },
        );
        let pick = |var: &str, key: &str| {
            env(var)
                .or_else(|| creds.get(key).cloned())
                .or_else(|| conf.get(key).cloned())
        };
        let region = pick("AWS_REGION", "region")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = pick("AWS_ENDPOINT_URL_S3", "endpoint_url")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let access_key = pick("AWS_ACCESS_KEY_ID", "aws_access_key_id").ok_or_else(|| {
            Error::Invalid("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)".into())
        })?;
        let secret_key = pick("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key")
            .ok_or_else(|| Error::Invalid("AWS_SECRET_ACCESS_KEY is not set".into()))?;
        Ok(S3Location {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            access_key,
            secret_key,
            session_token: pick("AWS_SESSION_TOKEN", "aws_session_token"),
        })
    }

    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// One section of an INI file such as ~/.aws/credentials.
fn ini_section(path: &str, section: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding as SigV4 wants it (`/` kept in paths); also what a
/// query value to the Cairn server needs.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub use crate::http::Answer as Response;

impl Response {
    /// The S3 error code of an error answer (`AccessDenied`, …).
    pub fn code(&self) -> String {
        roxmltree::Document::parse(&String::from_utf8_lossy(&self.body))
            .ok()
            .and_then(|d| {
                d.descendants()
                    .find(|n| n.has_tag_name("Code"))
                    .and_then(|n| n.text().map(String::from))
            })
            .unwrap_or_default()
    }
}

impl Drop for S3Client {
    fn drop(&mut self) {
        tracing::info!(
            "{} S3 requests to {}",
            self.requests.load(Ordering::Relaxed),
            self.loc.endpoint
        );
    }
}

/// A signed-request client for one bucket.
pub struct S3Client {
    pub loc: S3Location,
    agent: ureq::Agent,
    host: String,
    /// Requests sent (for the benchmark's requests per GiB).
    pub requests: std::sync::atomic::AtomicU64,
}

impl S3Client {
    pub fn new(loc: S3Location) -> Result<S3Client> {
        let host = loc
            .endpoint
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or(&loc.endpoint)
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            // An endpoint that never answers (a wrong address, a firewall
            // dropping packets) is said in a minute, not after five
            // requests' global timeouts.
            .timeout_connect(Some(Duration::from_secs(10)))
            // A store that takes a request and then stalls (overloaded,
            // paused, a proxy holding the connection) is given a minute
            // to start its answer, not the whole global timeout on every
            // try.
            .timeout_recv_response(Some(Duration::from_secs(answer_secs())))
            .build()
            .into();
        Ok(S3Client {
            loc,
            agent,
            host,
            requests: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn key(&self, name: &str) -> String {
        if self.loc.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.loc.prefix)
        }
    }

    /// Sends one signed request, retrying transport errors and 5xx
    /// answers with backoff.
    pub fn send(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        let mut last = String::new();
        let mut unreached = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt));
            }
            match self.send_once(method, key, query, headers, body) {
                Ok(r) if r.status >= 500 => {
                    last = format!("HTTP {} {}", r.status, r.code());
                    unreached = false;
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = e.to_string();
                    unreached = true;
                }
            }
            // A long wait is said as it happens, not only at the end.
            if attempt + 1 < ATTEMPTS {
                tracing::warn!(
                    "S3 {method} {}: {last}; trying again ({}/{ATTEMPTS})",
                    key.unwrap_or("/"),
                    attempt + 2
                );
            }
        }
        let hint = if unreached {
            "; is the endpoint right? AWS_ENDPOINT_URL, or the region, sets it"
        } else {
            ""
        };
        Err(Error::io(
            format!(
                "S3 {method} {} on {}",
                key.unwrap_or(&self.loc.bucket),
                self.loc.endpoint
            ),
            io::Error::other(format!("{last} (after {ATTEMPTS} attempts{hint})")),
        ))
    }

    fn send_once(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let path = match key {
            Some(k) => format!("/{}/{}", self.loc.bucket, uri_encode(k, true)),
            None => format!("/{}", self.loc.bucket),
        };
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let query_str = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let payload = hex_sha256(body);
        let mut h: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-content-sha256".into(), payload.clone()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(t) = &self.loc.session_token {
            h.push(("x-amz-security-token".into(), t.clone()));
        }
        for (k, v) in headers {
            h.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        h.sort();
        let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: String = h
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical =
            format!("{method}\n{path}\n{query_str}\n{canonical_headers}\n{signed}\n{payload}");
        let scope = format!("{date}/{}/s3/aws4_request", self.loc.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex_sha256(canonical.as_bytes())
        );
        let k = hmac(
            format!("AWS4{}", self.loc.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k = hmac(&k, self.loc.region.as_bytes());
        let k = hmac(&k, b"s3");
        let k = hmac(&k, b"aws4_request");
        let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.loc.access_key
        );
        let url = if query_str.is_empty() {
            format!("{}{path}", self.loc.endpoint)
        } else {
            format!("{}{path}?{query_str}", self.loc.endpoint)
        };
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in &h {
            if k != "host" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        req = req.header("authorization", auth);
        let req = req
            .body(body.to_vec())
            .map_err(|e| Error::Invalid(format!("building an S3 request: {e}")))?;
        let resp = self.agent.run(req).map_err(|e| {
            Error::io(
                format!("S3 {method} {url}"),
                io::Error::other(e.to_string()),
            )
        })?;
        Response::read(resp, method == "HEAD", MAX_BODY)
            .map_err(|e| Error::io(format!("S3 {method} {url}"), e))
    }

    fn fail(&self, what: &str, r: &Response) -> Error {
        let kind = match r.status {
            404 => io::ErrorKind::NotFound,
            403 => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        let code = r.code();
        // What the operator can do about the usual refusals.
        let hint = match code.as_str() {
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => {
                ": the store does not accept these credentials (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or ~/.aws/credentials)"
            }
            "AccessDenied" if r.status == 403 => {
                ": these credentials may not do this (check the key's bucket policy)"
            }
            "NoSuchBucket" => {
                ": the bucket does not exist (a typo? `cairn init --create-bucket` makes it)"
            }
            // A HEAD's refusal has no body to name it.
            "" if r.status == 403 => {
                ": refused (credentials not accepted, or not allowed by the bucket's policy: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            }
            _ => "",
        };
        Error::io(
            format!("S3 {what} in {}", self.loc.url()),
            io::Error::new(kind, format!("HTTP {} {code}{hint}", r.status)),
        )
    }

    /// Whether the bucket has versioning and Object Lock enabled.
    pub fn lock_status(&self) -> Result<(bool, bool)> {
        let v = self.send("GET", None, &[("versioning", "")], &[], b"")?;
        if v.status == 404 {
            return Err(Error::Invalid(format!(
                "bucket {} does not exist (create it with --create-bucket)",
                self.loc.bucket
            )));
        }
        if v.status != 200 {
            return Err(self.fail("GetBucketVersioning", &v));
        }
        let versioning = String::from_utf8_lossy(&v.body).contains("<Status>Enabled</Status>");
        let l = self.send("GET", None, &[("object-lock", "")], &[], b"")?;
        let lock = l.status == 200
            && String::from_utf8_lossy(&l.body)
                .contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>");
        Ok((versioning, lock))
    }

    /// Creates the bucket with Object Lock (which turns versioning on).
    pub fn create_bucket(&self) -> Result<()> {
        let body = if self.loc.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.loc.region
            )
        };
        let r = self.send(
            "PUT",
            None,
            &[],
            &[("x-amz-bucket-object-lock-enabled", "true".into())],
            body.as_bytes(),
        )?;
        match r.status {
            200 => Ok(()),
            409 if r.code() == "BucketAlreadyOwnedByYou" => Ok(()),
            _ => Err(self.fail("CreateBucket", &r)),
        }
    }

    /// Whether `name` has any version, current or not. Asked where the store
    /// serves no current one: then it was deleted, a delete marker on top
    /// and its content kept (locked) below.
    pub fn hidden(&self, name: &str) -> Result<bool> {
        Ok(!self.versions(&self.key(name))?.is_empty())
    }

    /// Takes away the delete markers that stand on top of the vault's
    /// objects (an `aws s3 rm --recursive` by whoever held the keys): each
    /// object's newest version becomes current again. Markers are not
    /// locked, so the store allows this whatever the retention. Returns
    /// the names brought back.
    pub fn undelete(&self) -> Result<Vec<String>> {
        let prefix = self.key("");
        // Every marker, not only the newest: a wipe run twice stacks them.
        // Cairn never makes one (its deletes remove versions), so each is
        // someone else's.
        let markers = self.delete_markers(&prefix)?;
        let mut back = std::collections::BTreeSet::new();
        for (key, version) in markers {
            let r = self.send(
                "DELETE",
                Some(&key),
                &[("versionId", version.as_str())],
                &[],
                b"",
            )?;
            if r.status != 204 && r.status != 200 {
                return Err(self.fail(&format!("DELETE {key} (delete marker {version})"), &r));
            }
            back.insert(key[prefix.len()..].to_string());
        }
        Ok(back.into_iter().collect())
    }

    /// The versions of `name` below its current one that hold data (not
    /// delete markers), oldest first: what Cairn wrote there, if someone
    /// overwrote it since (Cairn writes each of these names once, and
    /// Object Lock keeps the version it wrote).
    pub fn older_versions(&self, name: &str) -> Result<Vec<Version>> {
        let key = self.key(name);
        let mut out = Vec::new();
        // Bounded: 100 pages hold 100,000 versions stacked on one name.
        let mut pages = 0;
        self.each_versions_page(&key, |doc| {
            pages += 1;
            out.extend(versions_in(doc).filter(|v| v.key == key && !v.latest));
            pages < 100 && child_text(&doc.root_element(), "NextKeyMarker").is_none_or(|k| k <= key)
        })?;
        // Listings give each key's versions newest first.
        out.reverse();
        Ok(out)
    }

    /// Every version and delete marker of the vault's write-once names
    /// under `dir`, by name relative to the vault, versions newest first
    /// (as listings give them). One listing for the whole vault.
    fn stacks(&self, dir: &str) -> Result<std::collections::BTreeMap<String, Stack>> {
        let prefix = self.key("");
        let mut by_key: std::collections::BTreeMap<String, Stack> = Default::default();
        self.each_versions_page(&self.key(dir), |doc| {
            for n in doc.descendants().filter(|n| n.has_tag_name("DeleteMarker")) {
                if let Some(k) = child_text(&n, "Key") {
                    by_key.entry(k).or_default().markers += 1;
                }
            }
            for v in versions_in(doc) {
                by_key.entry(v.key.clone()).or_default().versions.push(v);
            }
            true
        })?;
        Ok(by_key
            .into_iter()
            .filter_map(|(key, stack)| Some((key.strip_prefix(&prefix)?.to_string(), stack)))
            .filter(|(rel, _)| among(rel, WRITTEN_ONCE))
            .collect())
    }

    /// The version Cairn wrote of each of its write-once names under
    /// `dir` that has anything stacked on it (someone's version or a
    /// delete marker): its oldest. Renewing a lock must reach that
    /// version — extending the one on top would keep the attacker's bytes
    /// and let Cairn's expire.
    pub fn originals(&self, dir: &str) -> Result<std::collections::HashMap<String, String>> {
        Ok(self
            .stacks(dir)?
            .into_iter()
            .filter(|(_, s)| s.versions.len() + s.markers > 1)
            .filter_map(|(rel, mut s)| Some((rel, s.versions.pop()?.id)))
            .collect())
    }

    /// [`Self::originals`] of one name: `None` when nothing is stacked on
    /// it (its current version is Cairn's). Below someone's version or a
    /// delete marker, Cairn's is the oldest of [`Self::older_versions`].
    pub fn original_of(&self, name: &str) -> Result<Option<String>> {
        if !among(name, WRITTEN_ONCE) {
            return Ok(None);
        }
        Ok(self.older_versions(name)?.into_iter().next().map(|v| v.id))
    }

    /// Aborts the multipart uploads under the vault's names that a backup
    /// killed mid-upload left: their parts are stored and billed but
    /// belong to no object. An upload is aborted only when an earlier
    /// call, `age_secs` or more before, saw it too (recorded in `seen`, a
    /// file of this machine's): a pack goes up in seconds, so one still
    /// there hours later is dead — and the store's own start date is not
    /// relied on (some stores report none, or a wrong one). Returns how
    /// many were aborted.
    pub fn abort_stale_uploads(&self, seen: &std::path::Path, age_secs: i64) -> Result<usize> {
        let prefix = self.key("");
        let mut open = Vec::new();
        self.each_page(Listing::Uploads, &prefix, |doc| {
            for u in doc.descendants().filter(|n| n.has_tag_name("Upload")) {
                if let (Some(key), Some(id)) = (child_text(&u, "Key"), child_text(&u, "UploadId"))
                    && key
                        .strip_prefix(&prefix)
                        .is_some_and(|rel| among(rel, WRITTEN_ONCE))
                {
                    open.push((key, id));
                }
            }
            true
        })?;
        // upload id → Unix second this machine first saw it.
        let before: std::collections::HashMap<String, i64> = std::fs::read_to_string(seen)
            .ok()
            .filter(|t| t.len() < 16 << 20)
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split_once(' '))
                    .filter_map(|(at, id)| Some((id.to_string(), at.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        let now = Utc::now().timestamp();
        let mut aborted = 0;
        let mut still = String::new();
        for (key, id) in &open {
            match before.get(id) {
                Some(&first) if now - first >= age_secs => {
                    let r =
                        self.send("DELETE", Some(key), &[("uploadId", id.as_str())], &[], b"")?;
                    // Gone already (completed or aborted meanwhile) is as good.
                    if !matches!(r.status, 200 | 204 | 404) {
                        return Err(self.fail(&format!("AbortMultipartUpload {key}"), &r));
                    }
                    aborted += 1;
                }
                first => still.push_str(&format!("{} {id}\n", first.copied().unwrap_or(now))),
            }
        }
        let tmp = seen.with_extension("tmp");
        std::fs::write(&tmp, still)
            .and_then(|()| std::fs::rename(&tmp, seen))
            .map_err(|e| Error::io(format!("writing {}", seen.display()), e))?;
        Ok(aborted)
    }

    /// Puts back on top what Cairn wrote under each of its write-once
    /// names that someone overwrote since (a new version on top, Object
    /// Lock keeping Cairn's below): its oldest version, copied on the
    /// store, locked as it was. Returns the names put back.
    pub fn restore_overwritten(&self) -> Result<Vec<String>> {
        let mut back = Vec::new();
        for (rel, key, original) in self.overwritten()? {
            let source = format!(
                "/{}/{}?versionId={}",
                self.loc.bucket,
                uri_encode(&key, true),
                uri_encode(&original.id, false)
            );
            let mut headers = vec![
                ("x-amz-copy-source", source),
                ("x-amz-metadata-directive", "REPLACE".to_string()),
                ("x-amz-meta-cairn-original", original.id.clone()),
                // Some stores want a digest with every write to a locked
                // bucket; a copy's request body is empty.
                ("content-md5", base64(&md5::Md5::digest(b""))),
            ];
            // Locked as long as the longer of the original's lock and the
            // current version's (which Cairn's renewals reached meanwhile).
            let lock_of = |version: Option<&str>| -> Result<Option<DateTime<Utc>>> {
                let q: Vec<(&str, &str)> = version.map(|v| ("versionId", v)).into_iter().collect();
                let head = self.send("HEAD", Some(&key), &q, &[], b"")?;
                Ok(head
                    .header("x-amz-object-lock-retain-until-date")
                    .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
                    .map(|u| u.with_timezone(&Utc)))
            };
            let until = lock_of(Some(&original.id))?.max(lock_of(None)?);
            if let Some(until) = until.filter(|u| *u > Utc::now()) {
                headers.push(("x-amz-object-lock-mode", "COMPLIANCE".to_string()));
                headers.push((
                    "x-amz-object-lock-retain-until-date",
                    until.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                ));
            }
            let r = self.send("PUT", Some(&key), &[], &headers, b"")?;
            // A copy can fail inside a 200 answer.
            if r.status != 200 || String::from_utf8_lossy(&r.body).contains("<Error>") {
                return Err(self.fail(&format!("CopyObject {key} (version {})", original.id), &r));
            }
            back.push(rel);
        }
        Ok(back)
    }

    /// The vault's write-once names whose current version is someone
    /// else's, stacked on the one Cairn wrote and not put back since:
    /// (name in the vault, key, Cairn's version — the oldest). One
    /// listing of every version under the vault's prefix.
    pub fn overwritten(&self) -> Result<Vec<(String, String, Version)>> {
        let mut out = Vec::new();
        for (rel, Stack { mut versions, .. }) in self.stacks("")? {
            let (Some(current), Some(original)) = (versions.first(), versions.last()) else {
                continue;
            };
            if !current.latest || current.etag == original.etag {
                continue;
            }
            // Put back before: a copy of a single-part original has its
            // ETag (above); of a multipart one (a large pack) it has not,
            // and the tag a copy carries says so — with the size, since
            // anyone listing versions could write that tag on their own.
            if original.etag.contains('-') && current.size == original.size {
                let now = self.send("HEAD", Some(&current.key), &[], &[], b"")?;
                if now.header("x-amz-meta-cairn-original") == Some(original.id.as_str()) {
                    continue;
                }
            }
            let original = versions.pop().expect("checked above");
            out.push((rel, original.key.clone(), original));
        }
        Ok(out)
    }

    /// Names of the vault's objects that have a delete marker on top
    /// (someone deleted them; the store keeps their versions).
    pub fn hidden_objects(&self, dir: &str) -> Result<Vec<String>> {
        let root = self.key("");
        let mut latest = std::collections::BTreeSet::new();
        self.each_versions_page(&self.key(dir), |doc| {
            latest.extend(
                doc.descendants()
                    .filter(|n| n.has_tag_name("DeleteMarker"))
                    .filter(|n| child_text(n, "IsLatest").as_deref() == Some("true"))
                    .filter_map(|n| child_text(&n, "Key"))
                    // Named as in the vault, as everything else is.
                    .filter_map(|k| k.strip_prefix(&root).map(str::to_string)),
            );
            true
        })?;
        Ok(latest.into_iter().collect())
    }

    /// (key, version id) of every delete marker on the vault's own names
    /// under `prefix` (a vault at a bucket's root shares it with whatever
    /// else the bucket holds: only names Cairn writes count).
    fn delete_markers(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        self.each_versions_page(prefix, |doc| {
            out.extend(
                doc.descendants()
                    .filter(|n| n.has_tag_name("DeleteMarker"))
                    .filter_map(|n| Some((child_text(&n, "Key")?, child_text(&n, "VersionId")?)))
                    .filter(|(k, _)| {
                        k.strip_prefix(prefix)
                            .is_some_and(|rel| among(rel, WRITTEN_ONCE) || among(rel, REWRITTEN))
                    }),
            );
            true
        })?;
        Ok(out)
    }

    /// Every version id of `key` (objects and delete markers).
    fn versions(&self, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        // A page holds at most 1,000 versions; a key overwritten more often
        // (or sharing its prefix with many keys) runs over several, and
        // versions left out would survive a delete: the oldest, the
        // original, would become the current one again.
        self.each_versions_page(key, |doc| {
            out.extend(
                doc.descendants()
                    .filter(|n| n.has_tag_name("Version") || n.has_tag_name("DeleteMarker"))
                    .filter(|n| child_text(n, "Key").as_deref() == Some(key))
                    .filter_map(|n| child_text(&n, "VersionId")),
            );
            // Past our key: nothing more of it follows.
            child_text(&doc.root_element(), "NextKeyMarker").is_none_or(|k| k.as_str() <= key)
        })?;
        Ok(out)
    }

    /// ListObjectVersions under `prefix`, page by page, each handed to
    /// `page` until it says to stop or the listing ends.
    fn each_versions_page(
        &self,
        prefix: &str,
        page: impl FnMut(&roxmltree::Document) -> bool,
    ) -> Result<()> {
        self.each_page(Listing::Versions, prefix, page)
    }

    /// A paged listing under `prefix`, each page handed to `page` until it
    /// says to stop or the listing ends. A page that names the marker it
    /// was asked from (a store looping) ends it too.
    fn each_page(
        &self,
        listing: Listing,
        prefix: &str,
        mut page: impl FnMut(&roxmltree::Document) -> bool,
    ) -> Result<()> {
        let (what, op, second_param, second_tag) = match listing {
            Listing::Versions => (
                "versions",
                "ListObjectVersions",
                "version-id-marker",
                "NextVersionIdMarker",
            ),
            Listing::Uploads => (
                "uploads",
                "ListMultipartUploads",
                "upload-id-marker",
                "NextUploadIdMarker",
            ),
        };
        let mut marker: Option<(String, String)> = None;
        for _ in 0..1_000_000 {
            let mut query = vec![(what, ""), ("prefix", prefix)];
            if let Some((k, v)) = &marker {
                query.push(("key-marker", k.as_str()));
                query.push((second_param, v.as_str()));
            }
            let r = self.send("GET", None, &query, &[], b"")?;
            if r.status != 200 {
                return Err(self.fail(op, &r));
            }
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let doc = roxmltree::Document::parse(&text)
                .map_err(|e| Error::Invalid(format!("S3 {op} answer: {e}")))?;
            if !page(&doc) {
                break;
            }
            let root = doc.root_element();
            let next = (
                child_text(&root, "NextKeyMarker"),
                child_text(&root, second_tag).unwrap_or_default(),
            );
            match (child_text(&root, "IsTruncated").as_deref(), next) {
                (Some("true"), (Some(k), v))
                    if marker.as_ref() != Some(&(k.clone(), v.clone())) =>
                {
                    marker = Some((k, v));
                }
                _ => break,
            }
        }
        Ok(())
    }
}

/// The two paged listings Cairn reads.
#[derive(Clone, Copy)]
enum Listing {
    Versions,
    Uploads,
}

/// The vault's names Cairn writes once (put-if-absent): a version on top
/// of one is someone else's.
const WRITTEN_ONCE: &[&str] = &[
    "config",
    "keys/",
    "packs/",
    "index/",
    "maps/",
    "snapshots/",
    "scan/",
];

/// The vault's other names (replaced or removed by Cairn itself).
const REWRITTEN: &[&str] = &["pins/", "insight/", "forgotten/", "audit/"];

/// Whether Cairn writes vault name `rel` once (see [`WRITTEN_ONCE`]).
pub(crate) fn written_once(rel: &str) -> bool {
    among(rel, WRITTEN_ONCE)
}

/// Whether `rel` (a name in the vault) is one of `names` or below one.
fn among(rel: &str, names: &[&str]) -> bool {
    names
        .iter()
        .any(|o| rel == *o || (o.ends_with('/') && rel.starts_with(o)))
}

/// What a listing holds of one name.
#[derive(Default)]
struct Stack {
    versions: Vec<Version>,
    markers: usize,
}

/// One version of an object that holds data.
#[derive(Debug, Clone)]
pub struct Version {
    pub key: String,
    pub id: String,
    pub etag: String,
    pub size: u64,
    /// The current version (served to a plain GET).
    pub latest: bool,
}

/// The data versions (not delete markers) of a ListObjectVersions page,
/// in its order.
fn versions_in<'a>(doc: &'a roxmltree::Document) -> impl Iterator<Item = Version> + 'a {
    doc.descendants()
        .filter(|n| n.has_tag_name("Version"))
        .filter_map(|n| {
            Some(Version {
                key: child_text(&n, "Key")?,
                id: child_text(&n, "VersionId")?,
                etag: child_text(&n, "ETag").unwrap_or_default(),
                size: child_text(&n, "Size")?.parse().ok()?,
                latest: child_text(&n, "IsLatest").as_deref() == Some("true"),
            })
        })
}

fn child_text(n: &roxmltree::Node, tag: &str) -> Option<String> {
    n.children()
        .find(|c| c.has_tag_name(tag))
        .and_then(|c| c.text().map(String::from))
}

/// The vault's objects in a bucket.
pub struct S3Backend {
    pub client: S3Client,
    /// Object Lock retention given to each new object, in seconds (0: no
    /// lock, for buckets created without it after an explicit --no-lock).
    retention_secs: AtomicI64,
}

impl S3Backend {
    pub fn new(client: S3Client) -> Self {
        S3Backend {
            client,
            retention_secs: AtomicI64::new(0),
        }
    }

    /// Retention for objects written from now on (the vault's retention
    /// plus the safety margin); 0 writes without a lock.
    pub fn set_retention(&self, secs: i64) {
        self.retention_secs.store(secs, Ordering::Relaxed);
    }

    fn head(&self, name: &str) -> Result<Option<Response>> {
        self.head_of(name, None)
    }

    /// HEAD of `name`'s current version, or of `version`.
    fn head_of(&self, name: &str, version: Option<&str>) -> Result<Option<Response>> {
        let query: Vec<(&str, &str)> = version.map(|v| ("versionId", v)).into_iter().collect();
        let r = self
            .client
            .send("HEAD", Some(&self.client.key(name)), &query, &[], b"")?;
        match r.status {
            200 => Ok(Some(r)),
            404 => Ok(None),
            _ => Err(self.client.fail(&format!("HEAD {name}"), &r)),
        }
    }

    /// Moves the compliance lock of `name` to `until` (S3 only lets it
    /// grow).
    pub fn extend_lock(&self, name: &str, until: DateTime<Utc>) -> Result<()> {
        self.extend_lock_of(name, None, until)
    }

    /// [`Self::extend_lock`] of one `version` of `name` (the current one
    /// when `None`).
    pub fn extend_lock_of(
        &self,
        name: &str,
        version: Option<&str>,
        until: DateTime<Utc>,
    ) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            until.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        let md5 = base64(&md5::Md5::digest(body.as_bytes()));
        let mut query = vec![("retention", "")];
        query.extend(version.map(|v| ("versionId", v)));
        let r = self.client.send(
            "PUT",
            Some(&self.client.key(name)),
            &query,
            &[("content-md5", md5)],
            body.as_bytes(),
        )?;
        if r.status != 200 {
            return Err(self.client.fail(&format!("PutObjectRetention {name}"), &r));
        }
        Ok(())
    }

    /// HEAD of an object that must exist (NotFound otherwise).
    fn head_existing(&self, name: &str) -> Result<Response> {
        self.head(name)?.ok_or_else(|| {
            Error::io(
                format!("S3 HEAD {name}"),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })
    }

    /// When the lock of `name` ends, if it has one.
    pub fn retain_until(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        self.retain_until_of(name, None)
    }

    /// [`Self::retain_until`] of one `version` of `name`.
    pub fn retain_until_of(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>> {
        Ok(self.head_of(name, version)?.and_then(|r| {
            r.header("x-amz-object-lock-retain-until-date")
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc))
        }))
    }
}

impl S3Backend {
    fn put_with(&self, name: &str, data: &[u8], lock: bool) -> Result<bool> {
        if self.head(name)?.is_some() {
            return Ok(false);
        }
        let mut lock_headers = Vec::new();
        let secs = self.retention_secs.load(Ordering::Relaxed);
        if secs > 0 && lock {
            let until = Utc::now() + chrono::Duration::seconds(secs);
            lock_headers.push(("x-amz-object-lock-mode", "COMPLIANCE".to_string()));
            lock_headers.push((
                "x-amz-object-lock-retain-until-date",
                until.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            ));
        }
        if data.len() > MULTIPART_ABOVE {
            return self.put_multipart(name, data, &lock_headers);
        }
        let md5 = base64(&md5::Md5::digest(data));
        let mut headers = vec![("content-md5", md5), ("if-none-match", "*".to_string())];
        headers.extend(lock_headers);
        let key = self.client.key(name);
        let mut r = self.client.send("PUT", Some(&key), &[], &headers, data)?;
        if r.status == 501 {
            // A store without conditional writes: the HEAD above is the
            // put-if-absent check (a racing writer stores the same bytes).
            headers.retain(|(k, _)| *k != "if-none-match");
            r = self.client.send("PUT", Some(&key), &[], &headers, data)?;
        }
        match r.status {
            200 => Ok(true),
            // Someone stored it first: content addressing makes it ours.
            412 => Ok(false),
            _ => Err(self.client.fail(&format!("PUT {name}"), &r)),
        }
    }
}

impl S3Backend {
    /// Large objects go up in parts, several at once; the lock is set when
    /// the upload is created and applies to the object it completes. A
    /// failed upload is aborted, so no parts linger.
    fn put_multipart(&self, name: &str, data: &[u8], lock: &[(&str, String)]) -> Result<bool> {
        let key = self.client.key(name);
        let r = self
            .client
            .send("POST", Some(&key), &[("uploads", "")], lock, b"")?;
        if r.status != 200 {
            return Err(self
                .client
                .fail(&format!("CreateMultipartUpload {name}"), &r));
        }
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let upload = roxmltree::Document::parse(&text)
            .ok()
            .and_then(|d| {
                d.descendants()
                    .find(|n| n.has_tag_name("UploadId"))
                    .and_then(|n| n.text().map(String::from))
            })
            .ok_or_else(|| {
                Error::Invalid(format!("S3 CreateMultipartUpload {name}: no UploadId"))
            })?;
        let parts: Vec<&[u8]> = data.chunks(PART_SIZE).collect();
        let uploaded: Result<Vec<String>> = {
            use rayon::prelude::*;
            parts
                .par_iter()
                .enumerate()
                .map(|(i, part)| {
                    let n = (i + 1).to_string();
                    let md5 = base64(&md5::Md5::digest(part));
                    let r = self.client.send(
                        "PUT",
                        Some(&key),
                        &[("partNumber", n.as_str()), ("uploadId", upload.as_str())],
                        &[("content-md5", md5)],
                        part,
                    )?;
                    if r.status != 200 {
                        return Err(self.client.fail(&format!("UploadPart {n} of {name}"), &r));
                    }
                    r.header("etag").map(String::from).ok_or_else(|| {
                        Error::Invalid(format!("S3 UploadPart {n} of {name}: no ETag"))
                    })
                })
                .collect()
        };
        let abort = || {
            let _ = self.client.send(
                "DELETE",
                Some(&key),
                &[("uploadId", upload.as_str())],
                &[],
                b"",
            );
        };
        let etags = match uploaded {
            Ok(e) => e,
            Err(e) => {
                abort();
                return Err(e);
            }
        };
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        // Completed only if the name is still free, as a single PUT is: a
        // writer whose HEAD raced another's would otherwise add a second
        // version of the name, which verify reports as tampering.
        let complete = |conditional: bool| {
            let headers = if conditional {
                vec![("if-none-match", "*".to_string())]
            } else {
                vec![]
            };
            self.client.send(
                "POST",
                Some(&key),
                &[("uploadId", upload.as_str())],
                &headers,
                body.as_bytes(),
            )
        };
        let mut r = complete(true)?;
        if r.status == 501 {
            // A store without conditional writes: the HEAD before is the
            // check, as for a single PUT.
            r = complete(false)?;
        }
        let text = String::from_utf8_lossy(&r.body);
        if r.status == 412 || text.contains("<Code>PreconditionFailed</Code>") {
            // Someone stored the name first: content addressing makes it
            // ours (pack names are random and never meet).
            abort();
            return Ok(false);
        }
        // S3 can answer 200 with an error document inside.
        if r.status != 200 || text.contains("<Error>") {
            abort();
            return Err(self
                .client
                .fail(&format!("CompleteMultipartUpload {name}"), &r));
        }
        // Some S3-compatible stores (moto among them) drop the lock given
        // at CreateMultipartUpload: set it on the completed object too.
        if !lock.is_empty() && self.retain_until(name)?.is_none() {
            let secs = self.retention_secs.load(Ordering::Relaxed);
            self.extend_lock(name, Utc::now() + chrono::Duration::seconds(secs))?;
        }
        Ok(true)
    }
}

impl S3Backend {
    /// One version of `name` (see [`S3Client::older_versions`]).
    pub fn get_version(&self, name: &str, version: &str) -> Result<Vec<u8>> {
        let r = self.client.send(
            "GET",
            Some(&self.client.key(name)),
            &[("versionId", version)],
            &[],
            b"",
        )?;
        if r.status != 200 {
            return Err(self
                .client
                .fail(&format!("GET {name} (version {version})"), &r));
        }
        Ok(r.body)
    }
}

impl Backend for S3Backend {
    fn put(&self, name: &str, data: &[u8]) -> Result<bool> {
        self.put_with(name, data, true)
    }

    fn put_marker(&self, name: &str) -> Result<bool> {
        self.put_with(name, b"", false)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let r = self
            .client
            .send("GET", Some(&self.client.key(name)), &[], &[], b"")?;
        if r.status != 200 {
            return Err(self.client.fail(&format!("GET {name}"), &r));
        }
        Ok(r.body)
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = format!("bytes={offset}-{}", offset + len as u64 - 1);
        let r = self.client.send(
            "GET",
            Some(&self.client.key(name)),
            &[],
            &[("range", range)],
            b"",
        )?;
        if r.status != 206 && r.status != 200 {
            return Err(self.client.fail(&format!("GET {name} (range)"), &r));
        }
        let mut body = r.body;
        if r.status == 200 {
            // A server that ignored the range sent the whole object.
            body = body
                .get(offset as usize..offset as usize + len)
                .unwrap_or(&[])
                .to_vec();
        }
        if body.len() != len {
            return Err(Error::io(
                format!("S3 GET {name}"),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} of {len} bytes", body.len()),
                ),
            ));
        }
        Ok(body)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = format!("{}/", self.client.key(dir.trim_end_matches('/')));
        let strip = if self.client.loc.prefix.is_empty() {
            0
        } else {
            self.client.loc.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix.as_str())];
            if let Some(t) = &token {
                q.push(("continuation-token", t.as_str()));
            }
            let r = self.client.send("GET", None, &q, &[], b"")?;
            if r.status != 200 {
                return Err(self.client.fail(&format!("LIST {dir}"), &r));
            }
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let doc = roxmltree::Document::parse(&text)
                .map_err(|e| Error::Invalid(format!("S3 ListObjectsV2 answer: {e}")))?;
            for n in doc.descendants().filter(|n| n.has_tag_name("Contents")) {
                if let Some(k) = child_text(&n, "Key")
                    && let Some(rel) = k.get(strip..)
                {
                    out.push(rel.to_string());
                }
            }
            let truncated = doc
                .descendants()
                .find(|n| n.has_tag_name("IsTruncated"))
                .and_then(|n| n.text())
                == Some("true");
            token = doc
                .descendants()
                .find(|n| n.has_tag_name("NextContinuationToken"))
                .and_then(|n| n.text().map(String::from));
            if !truncated || token.is_none() {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.head(name)?.is_some())
    }

    fn size(&self, name: &str) -> Result<u64> {
        let r = self.head_existing(name)?;
        r.header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("S3 HEAD {name}: no Content-Length")))
    }

    fn modified(&self, name: &str) -> Result<std::time::SystemTime> {
        let r = self.head_existing(name)?;
        r.header("last-modified")
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.with_timezone(&Utc).into())
            .ok_or_else(|| Error::Invalid(format!("S3 HEAD {name}: no Last-Modified")))
    }

    /// Removes every version of the object; the store refuses while a
    /// version is locked, and that refusal is returned.
    fn delete(&self, name: &str) -> Result<()> {
        let key = self.client.key(name);
        for v in self.client.versions(&key)? {
            let r =
                self.client
                    .send("DELETE", Some(&key), &[("versionId", v.as_str())], &[], b"")?;
            if r.status != 204 && r.status != 200 {
                return Err(self
                    .client
                    .fail(&format!("DELETE {name} (version {v})"), &r));
            }
        }
        // Counted deleted only when the store no longer serves it.
        if self.exists(name)? {
            return Err(Error::Invalid(format!(
                "S3: {name} is still there after every version listed was deleted"
            )));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} at {}", self.client.loc.url(), self.client.loc.endpoint)
    }

    fn as_s3(&self) -> Option<&S3Backend> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers of one name whose HEADs both found it free (as two
    /// hosts storing the same large map at once): the second multipart
    /// upload is refused at completion and adds no version. Against a
    /// real S3 server (moto's, as `.ci/run` installs).
    #[test]
    fn a_second_multipart_upload_of_a_stored_name_adds_no_version() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut moto = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; scripts/install-deps does)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let loc = S3Location {
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".into(),
            bucket: "cairn-multipart".into(),
            prefix: "vault".into(),
            access_key: "test".into(),
            secret_key: "test".into(),
            session_token: None,
        };
        let client = S3Client::new(loc).unwrap();
        client.create_bucket().unwrap();
        let backend = S3Backend::new(S3Client::new(client.loc.clone()).unwrap());
        let data: Vec<u8> = (0..PART_SIZE + 1000).map(|i| (i % 251) as u8).collect();
        let name = "maps/ab/large";
        let first = backend.put_multipart(name, &data, &[]);
        let second = backend.put_multipart(name, &data, &[]);
        let versions = client.versions(&client.key(name));
        let _ = moto.kill();
        let _ = moto.wait();
        assert!(first.unwrap());
        assert!(!second.unwrap(), "the second upload was completed");
        assert_eq!(versions.unwrap().len(), 1);
    }

    #[test]
    fn signing_pieces_follow_the_specification() {
        // RFC 4648 vectors and SigV4's encoding rules.
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(uri_encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn bucket_names_follow_s3s_rules() {
        for good in ["abc", "my-vault", "cairn.backups-01", &"a".repeat(63)] {
            assert!(valid_bucket_name(good), "{good}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Vault",
            "my..vault",
            "-vault",
            "vault-",
            "my.-vault",
            "192.168.1.1",
            "xn--vault",
            "my_vault",
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn aws_signing_key_example() {
        // The signing-key example from AWS's Signature Version 4 docs.
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(
            hex::encode(k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
