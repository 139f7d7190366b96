//! Redaction of injected secret values from what an upstream sends back.
//!
//! Each occurrence becomes as many `*` as it has bytes, so lengths (and `Content-Length`)
//! stay valid. Bodies are streamed: the redactor holds back only the bytes that could be the
//! start of a match split across chunks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};

pub(super) struct Redactor {
    needles: Vec<Vec<u8>>,
    /// Bytes held back: one less than the longest needle.
    keep: usize,
    carry: Vec<u8>,
}

impl Redactor {
    pub(super) fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut needles: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::into_bytes)
            .collect();
        // Longest first, so a value that contains another is starred whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        let keep = needles.first().map_or(0, |n| n.len() - 1);
        Redactor {
            needles,
            keep,
            carry: Vec::new(),
        }
    }

    /// Stars every occurrence in `buf`, in place.
    fn star(&self, buf: &mut [u8]) {
        for needle in &self.needles {
            let mut i = 0;
            while i + needle.len() <= buf.len() {
                if buf[i..].starts_with(needle) {
                    buf[i..i + needle.len()].fill(b'*');
                    i += needle.len();
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Takes the next chunk; returns what may be sent on now.
    pub(super) fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.star(&mut buf);
        // Whatever is left of a match starts within the last `keep` bytes.
        let emit = buf.len().saturating_sub(self.keep);
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

    fn stream(values: &[&str], chunks: &[&str]) -> String {
        let mut r = Redactor::new(values.iter().map(|s| s.to_string()));
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
    fn headers_are_starred() {
        let r = Redactor::new(["s3cr".to_string()]);
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
        let body = RedactBody::new(inner, Redactor::new(["secret".to_string()]));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"hello ****** bye");
    }
}
