//! Redaction of the secret values a sandbox holds from what upstreams send back to it.
//!
//! What is looked for, for each value (see `docs/network.md` for what this does and does not
//! promise):
//! - the value itself, in any ASCII case;
//! - its hex encoding (any case), its percent-encoding, and the value with `/` escaped as
//!   `\/` (JSON);
//! - its base64 and base64url encodings, at each of the three offsets the value can have in
//!   an encoded string: the characters that depend on the value's bytes alone, so the value
//!   is found inside the encoding of a longer text too.
//!
//! Encodings are looked for only for values of at least [`MIN_ENCODED_VALUE`] bytes (shorter
//! ones would star ordinary text). Each occurrence becomes as many `*` as it has bytes, so
//! lengths (and `Content-Length`) stay valid. Bodies are streamed: the redactor holds back
//! only the bytes that could be the start of a match split across chunks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::AhoCorasick;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};

/// Values shorter than this are looked for as they are (in any case), not encoded.
pub(super) const MIN_ENCODED_VALUE: usize = 8;

/// What to look for, built once for a set of values (automata are not free to build).
pub(super) struct Patterns {
    /// Matched in any ASCII case: the value, hex, percent-encoding.
    any_case: Option<AhoCorasick>,
    /// Matched exactly: base64 and base64url.
    exact: Option<AhoCorasick>,
    /// Bytes held back: one less than the longest pattern.
    keep: usize,
}

/// One response's redaction: the patterns, and the bytes held back between chunks.
pub(super) struct Redactor {
    patterns: Arc<Patterns>,
    carry: Vec<u8>,
}

/// The patterns for `value`: (any case, exact).
fn patterns(value: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut any_case = vec![value.to_vec()];
    let mut exact = Vec::new();
    if value.len() >= MIN_ENCODED_VALUE {
        any_case.push(
            value
                .iter()
                .flat_map(|b| format!("{b:02x}").into_bytes())
                .collect(),
        );
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if !value.iter().all(|b| unreserved(*b)) {
            let encoded = value
                .iter()
                .flat_map(|&b| {
                    if unreserved(b) {
                        vec![b]
                    } else {
                        format!("%{b:02X}").into_bytes()
                    }
                })
                .collect();
            any_case.push(encoded);
        }
        if value.contains(&b'/') {
            let escaped = value
                .iter()
                .flat_map(|&b| if b == b'/' { vec![b'\\', b'/'] } else { vec![b] })
                .collect();
            any_case.push(escaped);
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for offset in 0..3usize {
                let mut input = vec![0u8; offset];
                input.extend_from_slice(value);
                let encoded = engine.encode(&input).into_bytes();
                // Character i carries bits [6i, 6i + 6); the value's are [8 offset, 8 len).
                let start = (8 * offset).div_ceil(6);
                let end = (8 * input.len()) / 6;
                if end > start {
                    exact.push(encoded[start..end].to_vec());
                }
            }
        }
    }
    (any_case, exact)
}

fn automaton(patterns: &[Vec<u8>], any_case: bool) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    AhoCorasick::builder()
        .ascii_case_insensitive(any_case)
        .build(patterns)
        .ok()
}

impl Patterns {
    pub(super) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Patterns {
        let mut any_case = Vec::new();
        let mut exact = Vec::new();
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            let (a, e) = patterns(value.as_bytes());
            any_case.extend(a);
            exact.extend(e);
        }
        any_case.sort();
        any_case.dedup();
        exact.sort();
        exact.dedup();
        let keep = any_case
            .iter()
            .chain(&exact)
            .map(Vec::len)
            .max()
            .map_or(0, |n| n - 1);
        Patterns {
            any_case: automaton(&any_case, true),
            exact: automaton(&exact, false),
            keep,
        }
    }

    /// Whether there is anything to look for.
    pub(super) fn is_empty(&self) -> bool {
        self.any_case.is_none() && self.exact.is_none()
    }

    /// Stars every occurrence in `buf` (overlapping ones too), in place.
    fn star(&self, buf: &mut [u8]) {
        let mut ranges = Vec::new();
        for ac in self.any_case.iter().chain(&self.exact) {
            ranges.extend(ac.find_overlapping_iter(&*buf).map(|m| m.range()));
        }
        for r in ranges {
            buf[r].fill(b'*');
        }
    }
}

impl Redactor {
    pub(super) fn new(patterns: Arc<Patterns>) -> Redactor {
        Redactor {
            patterns,
            carry: Vec::new(),
        }
    }

    /// Whether there is anything to look for.
    pub(super) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    fn star(&self, buf: &mut [u8]) {
        self.patterns.star(buf);
    }

    /// Takes the next chunk; returns what may be sent on now.
    pub(super) fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.star(&mut buf);
        // Whatever is left of a match starts within the last `keep` bytes.
        let emit = buf.len().saturating_sub(self.patterns.keep);
        self.carry = buf.split_off(emit);
        Bytes::from(buf)
    }

    /// The held-back tail, at the end of the stream.
    pub(super) fn finish(&mut self) -> Bytes {
        let mut rest = std::mem::take(&mut self.carry);
        self.star(&mut rest);
        Bytes::from(rest)
    }

    pub(super) fn headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            let mut bytes = value.as_bytes().to_vec();
            self.star(&mut bytes);
            if bytes != value.as_bytes() {
                // Stars are valid header bytes wherever the value's bytes were.
                *value = HeaderValue::from_bytes(&bytes).expect("starred header value stays valid");
            }
        }
    }
}

/// A body with the secret values starred out as it streams.
pub(super) struct RedactBody<B> {
    inner: B,
    redactor: Redactor,
    /// Trailers waiting for the held-back bytes to go first.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> RedactBody<B> {
    pub(super) fn new(inner: B, redactor: Redactor) -> Self {
        RedactBody {
            inner,
            redactor,
            trailers: None,
            done: false,
        }
    }
}

impl<B> Body for RedactBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                let rest = this.redactor.finish();
                if !rest.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.redactor.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            this.redactor.headers(&mut trailers);
                            this.trailers = Some(trailers);
                        }
                        this.done = true;
                    }
                },
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Redaction keeps every length.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        Redactor::new(Arc::new(Patterns::new(values.iter().copied())))
    }

    fn stream(values: &[&str], chunks: &[&str]) -> String {
        let mut r = redactor(values);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.push(c.as_bytes()));
        }
        out.extend_from_slice(&r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn stars_matches_anywhere_keeping_the_length() {
        assert_eq!(stream(&["s3cret"], &["a s3cret b"]), "a ****** b");
        assert_eq!(
            stream(&["s3cret"], &["a s3", "cr", "et b s3cret"]),
            "a ****** b ******"
        );
        assert_eq!(stream(&["s3cret"], &["s", "3", "c", "r", "e", "t"]), "******");
        assert_eq!(stream(&["s3cret"], &["s3cre"]), "s3cre");
        assert_eq!(stream(&["ab", "abcd"], &["xabcdy ab"]), "x****y **");
        assert_eq!(stream(&[""], &["nothing"]), "nothing");
    }

    #[test]
    fn finds_other_cases_and_encodings_at_every_offset() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let value = "tok_ABCdef0123456789/x";
        assert_eq!(
            stream(&[value], &[&value.to_uppercase()]),
            "*".repeat(value.len())
        );
        for pre in 0..4 {
            for post in 0..3 {
                let text = format!("{}{value}{}", "p".repeat(pre), "q".repeat(post));
                let hex: String = text.bytes().map(|b| format!("{b:02X}")).collect();
                for encoded in [STANDARD.encode(&text), URL_SAFE.encode(&text), hex] {
                    // Split at every place: a match across chunks is found too.
                    for cut in [1, encoded.len() / 2, encoded.len() - 1] {
                        let out = stream(&[value], &[&encoded[..cut], &encoded[cut..]]);
                        assert_eq!(out.len(), encoded.len());
                        assert!(out.contains("**********"), "{pre}/{post}: {encoded} -> {out}");
                    }
                }
            }
        }
        // Percent-encoded and JSON-escaped.
        assert_eq!(stream(&[value], &["tok_ABCdef0123456789%2Fx"]), "*".repeat(24));
        assert_eq!(stream(&[value], &["tok_ABCdef0123456789\\/x"]), "*".repeat(23));
        // A short value is looked for as it is only: its encodings would match ordinary text.
        assert_eq!(stream(&["abc"], &["YWJj 616263"]), "YWJj 616263");
    }

    #[test]
    fn headers_are_starred() {
        let r = redactor(&["s3cr"]);
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_static("token s3cr"));
        r.headers(&mut h);
        assert_eq!(h["x-echo"], "token ****");
    }

    #[tokio::test]
    async fn body_streams_and_flushes_the_tail() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = ["hello se", "cret", " bye"]
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        let inner = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let body = RedactBody::new(inner, redactor(&["secret"]));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"hello ****** bye");
    }
}
