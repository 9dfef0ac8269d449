//! Request bodies, received in full before a handler runs, within limits
//! that one client cannot exhaust for the others:
//!
//! - a body must keep coming: no gap longer than the header timeout, and
//!   all of it within that timeout plus its length at [`MIN_BODY_RATE`]
//!   (a body sent a byte every few seconds would otherwise hold its
//!   connection, and its memory, for ever);
//! - the bodies held at once share [`BODY_BUDGET`] bytes, each reserving
//!   its announced length before a byte is read (object uploads may be
//!   hundreds of MiB);
//! - one caller (token) receives at most [`BODIES_PER_CALLER`] bodies at
//!   once, so one compromised host holds a few places, not all of them;
//! - a request without a token sends at most [`ANONYMOUS_BODY`] bytes (the
//!   console's sign-in form), so it holds a connection's place for no
//!   longer than slow headers would.
//!
//! A request that cannot get its places within the header timeout is
//! answered 503 (clients retry those).

use crate::ApiError;
use axum::body::Body;
use axum::http::{StatusCode, header, request::Parts};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of request bodies held at once, all callers together.
pub const BODY_BUDGET: usize = 1 << 30;
/// Bodies one caller may be sending at once (an agent sends four packs
/// at a time).
pub const BODIES_PER_CALLER: usize = 8;
/// Slowest average a body may arrive at, past the header timeout.
pub const MIN_BODY_RATE: u64 = 16 << 10;
/// Largest body outside object uploads (a chunk-id list).
const MAX_OTHER_BODY: usize = 4 << 20;
/// Largest body of a request without a token.
pub const ANONYMOUS_BODY: usize = 4 << 10;

/// The budget is counted in KiB: a semaphore holds fewer permits than a
/// byte count can reach.
const UNIT: usize = 1024;

pub struct Bodies {
    budget: Arc<Semaphore>,
    per_caller: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies {
            budget: Arc::new(Semaphore::new(BODY_BUDGET / UNIT)),
            per_caller: Mutex::new(HashMap::new()),
        }
    }
}

/// A received body's places, given back when the request is done (its
/// handler holds the bytes until then).
pub struct Held {
    _budget: OwnedSemaphorePermit,
    _caller: Option<OwnedSemaphorePermit>,
}

impl Bodies {
    /// Receives the body of the request `parts` describes from `caller`
    /// (a token id; None for requests without one); gives back the body
    /// to hand on and the places it holds. Requests without a body pass
    /// as they are.
    pub async fn receive(
        &self,
        parts: &Parts,
        caller: Option<&str>,
        body: Body,
        timeout: Duration,
    ) -> Result<(Body, Option<Held>), ApiError> {
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
        let most = if caller.is_none() {
            ANONYMOUS_BODY
        } else if parts.uri.path().starts_with("/api/v1/objects/") {
            crate::objects::MAX_UPLOAD
        } else {
            MAX_OTHER_BODY
        };
        if length.is_some_and(|n| n > most as u64) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body here is at most {most} bytes"),
            ));
        }
        // Without a length, room for the largest body allowed.
        let reserve = length.map_or(most, |n| n as usize);
        let held = self.places(caller, reserve, timeout).await?;
        let deadline = tokio::time::Instant::now()
            + timeout
            + Duration::from_secs(reserve as u64 / MIN_BODY_RATE);
        // An announced length is allocated at once; otherwise as it comes.
        let mut data = Vec::with_capacity(length.map_or(64 << 10, |n| n as usize));
        let mut stream = body.into_data_stream();
        loop {
            let gap = (tokio::time::Instant::now() + timeout).min(deadline);
            let piece = match tokio::time::timeout_at(gap, stream.next()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the body came too slowly ({} of {} bytes); send at least {} KiB/s",
                            data.len(),
                            reserve,
                            MIN_BODY_RATE >> 10
                        ),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ApiError::bad(format!("reading the body: {e}"))),
                Ok(Some(Ok(piece))) => piece,
            };
            if data.len() + piece.len() > reserve {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is longer than the {reserve} bytes announced or allowed"),
                ));
            }
            data.extend_from_slice(&piece);
        }
        if length.is_some_and(|n| n != data.len() as u64) {
            return Err(ApiError::bad("the body ended before its Content-Length"));
        }
        Ok((Body::from(data), Some(held)))
    }

    /// A place among `caller`'s bodies and `bytes` of the budget, waited
    /// for at most `timeout`.
    async fn places(
        &self,
        caller: Option<&str>,
        bytes: usize,
        timeout: Duration,
    ) -> Result<Held, ApiError> {
        let busy = |what: &str| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server is receiving {what}: try again shortly"),
            )
        };
        let caller_place = match caller {
            // Tiny bodies, bounded by the connection limits.
            None => None,
            Some(id) => {
                let mine = self
                    .per_caller
                    .lock()
                    .unwrap()
                    .entry(id.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(BODIES_PER_CALLER)))
                    .clone();
                let place = tokio::time::timeout(timeout, mine.acquire_owned())
                    .await
                    .map_err(|_| {
                        busy(&format!(
                            "{BODIES_PER_CALLER} bodies from this token already"
                        ))
                    })?
                    .expect("never closed");
                Some(place)
            }
        };
        let units = u32::try_from(bytes.div_ceil(UNIT)).expect("bodies are bounded");
        let budget = tokio::time::timeout(timeout, self.budget.clone().acquire_many_owned(units))
            .await
            .map_err(|_| busy("as many bytes as it holds at once"))?
            .expect("never closed");
        Ok(Held {
            _budget: budget,
            _caller: caller_place,
        })
    }
}
