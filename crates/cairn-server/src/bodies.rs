//! Request bodies, received in full before a handler runs, within limits
//! that one client cannot exhaust for the others:
//!
//! - a body must keep coming: at least [`MIN_BODY_RATE`] in every span of
//!   the header timeout (a body sent a byte every few seconds would
//!   otherwise hold its connection, and its memory, for ever; bytes sent
//!   early do not buy a later pause);
//! - bodies take memory from [`BODY_BUDGET`] as their bytes arrive (not
//!   as announced: holding much of it means having sent that much), one
//!   token at most [`MAX_UPLOAD`] of it, in at most [`BODIES_PER_CALLER`]
//!   bodies at once; so one compromised host holds half at most;
//! - a request with no valid token sends a body only to sign in, of
//!   [`ANONYMOUS_BODY`] bytes at most; elsewhere its body is left unread
//!   (the handler refuses it first).
//!
//! Memory a request cannot get within the header timeout is answered 503
//! (clients retry those). What a body holds is given back when its
//! request is done, including work a handler goes on with after the
//! client hung up (see [`BodyHold`]).

use crate::ApiError;
use crate::objects::MAX_UPLOAD;
use axum::body::Body;
use axum::http::{StatusCode, header, request::Parts};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes of request bodies held at once, all callers together.
pub const BODY_BUDGET: usize = 1 << 30;
/// Bodies one caller may be sending at once (an agent sends four packs
/// at a time).
pub const BODIES_PER_CALLER: usize = 8;
/// Slowest a body may arrive, over each span of the header timeout.
pub const MIN_BODY_RATE: u64 = 16 << 10;
/// Largest body outside object uploads (a chunk-id list).
const MAX_OTHER_BODY: usize = 4 << 20;
/// Largest body of a request without a token (the sign-in form).
pub const ANONYMOUS_BODY: usize = 4 << 10;

/// Memory is counted in KiB: a semaphore holds fewer permits than a byte
/// count can reach.
const UNIT: usize = 1024;

pub struct Bodies {
    budget: Arc<Semaphore>,
    per_caller: Mutex<HashMap<String, Caller>>,
}

/// One token's share: bodies in flight, and bytes they hold.
#[derive(Clone)]
struct Caller {
    bodies: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies {
            budget: Arc::new(Semaphore::new(BODY_BUDGET / UNIT)),
            per_caller: Mutex::new(HashMap::new()),
        }
    }
}

/// What a received body holds (memory, a place among its caller's
/// bodies), given back when the last clone is dropped: the request, and
/// a handler's blocking work that outlives a client that hung up.
#[derive(Clone)]
pub struct BodyHold(#[allow(dead_code)] Arc<Held>);

/// Kept for what dropping them gives back.
#[derive(Default)]
#[allow(dead_code)]
struct Held {
    place: Option<OwnedSemaphorePermit>,
    token_bytes: Option<OwnedSemaphorePermit>,
    budget: Option<OwnedSemaphorePermit>,
}

impl Bodies {
    /// Receives the body of the request `parts` describes from `caller`
    /// (a token id; None without a valid token); gives back the body to
    /// hand on and what it holds. Requests without a body pass as they
    /// are.
    pub async fn receive(
        &self,
        parts: &Parts,
        caller: Option<&str>,
        body: Body,
        timeout: Duration,
    ) -> Result<(Body, Option<BodyHold>), ApiError> {
        let length = match parts.headers.get(header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| ApiError::bad("Content-Length is not a number"))?,
            ),
            None => None,
        };
        let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
        if length.unwrap_or(0) == 0 && !chunked {
            return Ok((body, None));
        }
        let most = match caller {
            // Unread: the handler answers 401 (or a revoked token's
            // message) without it.
            None if parts.uri.path() != "/login" => return Ok((body, None)),
            None => ANONYMOUS_BODY,
            Some(_) if parts.uri.path().starts_with("/api/v1/objects/") => MAX_UPLOAD,
            Some(_) => MAX_OTHER_BODY,
        };
        if length.is_some_and(|n| n > most as u64) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body here is at most {most} bytes"),
            ));
        }
        let mut held = Held::default();
        let mine = match caller {
            Some(id) => {
                let c = self.caller(id);
                held.place = Some(
                    tokio::time::timeout(timeout, c.bodies.clone().acquire_owned())
                        .await
                        .map_err(|_| busy(&format!("{BODIES_PER_CALLER} bodies from this token")))?
                        .expect("never closed"),
                );
                Some(c)
            }
            None => None,
        };
        let mut data = Vec::with_capacity(length.map_or(64 << 10, |n| n as usize));
        let mut units_held = 0usize;
        let mut stream = body.into_data_stream();
        // Each span of `timeout` brings MIN_BODY_RATE or the body is cut.
        let span_bytes = MIN_BODY_RATE * timeout.as_secs().max(1);
        let mut span = (Instant::now(), 0u64);
        let too_slow = |so_far: usize| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body came too slowly ({so_far} bytes so far); send at least {} KiB/s",
                    MIN_BODY_RATE >> 10
                ),
            )
        };
        loop {
            let piece = match tokio::time::timeout_at(span.0 + timeout, stream.next()).await {
                Err(_) if span.1 >= span_bytes => {
                    // Enough came in this span (then a pause): a new one.
                    span = (Instant::now(), 0);
                    continue;
                }
                Err(_) => return Err(too_slow(data.len())),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ApiError::bad(format!("reading the body: {e}"))),
                Ok(Some(Ok(piece))) => piece,
            };
            if data.len() + piece.len() > length.map_or(most, |n| n as usize) {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is longer than announced or allowed",
                ));
            }
            // Memory for the new bytes before they are kept.
            let units = (data.len() + piece.len()).div_ceil(UNIT) - units_held;
            if units > 0 {
                let n = u32::try_from(units).expect("a piece is bounded");
                if let Some(c) = &mine {
                    let p = self
                        .take(&c.bytes, n, timeout, "this token's bodies")
                        .await?;
                    keep(&mut held.token_bytes, p);
                }
                let p = self
                    .take(&self.budget, n, timeout, "as many bytes as it holds")
                    .await?;
                keep(&mut held.budget, p);
                units_held += units;
            }
            span.1 += piece.len() as u64;
            // A piece that came as the span ended is judged with it: a
            // trickle timed to the boundary gets no fresh span for free.
            if span.0.elapsed() >= timeout {
                if span.1 < span_bytes {
                    return Err(too_slow(data.len() + piece.len()));
                }
                span = (Instant::now(), 0);
            }
            data.extend_from_slice(&piece);
        }
        if length.is_some_and(|n| n != data.len() as u64) {
            return Err(ApiError::bad("the body ended before its Content-Length"));
        }
        Ok((Body::from(data), Some(BodyHold(Arc::new(held)))))
    }

    fn caller(&self, id: &str) -> Caller {
        self.per_caller
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(|| Caller {
                bodies: Arc::new(Semaphore::new(BODIES_PER_CALLER)),
                bytes: Arc::new(Semaphore::new(MAX_UPLOAD / UNIT)),
            })
            .clone()
    }

    /// `n` units of `pool`, waited for at most `timeout`.
    async fn take(
        &self,
        pool: &Arc<Semaphore>,
        n: u32,
        timeout: Duration,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        Ok(
            tokio::time::timeout(timeout, pool.clone().acquire_many_owned(n))
                .await
                .map_err(|_| busy(what))?
                .expect("never closed"),
        )
    }
}

/// Adds `p` to what `slot` holds of the same pool.
fn keep(slot: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
    match slot {
        Some(mine) => mine.merge(p),
        None => *slot = Some(p),
    }
}

fn busy(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the server is receiving {what} already: try again shortly"),
    )
}
