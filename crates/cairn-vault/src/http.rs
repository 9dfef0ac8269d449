//! What the two HTTP backends (S3 and a Cairn server) share: reading an
//! answer whole, with a bound on its body.

use std::io::Read;

/// An HTTP answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads `resp` (its body unless `head`, at most `max` bytes).
    pub fn read(
        mut resp: ureq::http::Response<ureq::Body>,
        head: bool,
        max: u64,
    ) -> std::io::Result<Answer> {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let mut body = Vec::new();
        if !head {
            // Past `max` the read fails rather than truncate.
            resp.body_mut()
                .with_config()
                .limit(max)
                .reader()
                .read_to_end(&mut body)?;
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}
