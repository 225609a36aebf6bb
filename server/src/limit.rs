//! The bound on a gRPC request message's size, as etcd's gRPC server (grpc-go) enforces it:
//! a message longer than `--max-request-bytes` plus 512 KiB fails the call with
//! `ResourceExhausted` and `grpc: received message larger than max (N vs. M)`. tonic's own
//! check answers `OutOfRange` with a message of its own, which clients do not match on; this
//! layer reads each message's length from its gRPC frame header as the body streams in and
//! fails the body first (tonic passes a body's `Status` error on unchanged), so that the
//! message is never buffered.

use axum::body::{Body, Bytes, HttpBody};
use axum::http::Request;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Status;

/// grpc-go's message for a request message over the server's limit.
pub(crate) fn too_large(len: usize, max: usize) -> Status {
    Status::resource_exhausted(format!("grpc: received message larger than max ({len} vs. {max})"))
}

/// Wraps a gRPC request's body in a [`FrameLimit`] of `message_bytes_max`.
pub(crate) fn limit_request(request: Request<Body>, message_bytes_max: usize) -> Request<Body> {
    request.map(|body| Body::new(FrameLimit::new(body, message_bytes_max)))
}

/// Length-prefixed gRPC message frame header: compression flag, then a big-endian u32 length.
const HEADER_BYTES: usize = 5;

/// A request body that fails, with grpc-go's error, once a frame header announces a message
/// longer than `max`.
///
/// Invariant: `header_len < HEADER_BYTES`; while `body_left > 0` the bytes seen are a message's
/// body, otherwise its next header (of which `header_len` bytes are in `header`).
pub(crate) struct FrameLimit {
    inner: Body,
    max: usize,
    header: [u8; HEADER_BYTES],
    header_len: usize,
    body_left: usize,
    failed: bool,
}

impl FrameLimit {
    pub(crate) fn new(inner: Body, max: usize) -> Self {
        FrameLimit { inner, max, header: [0; HEADER_BYTES], header_len: 0, body_left: 0, failed: false }
    }

    /// Follows the frames through `data`; the length of the first message over the bound.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), usize> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len == HEADER_BYTES {
                self.header_len = 0;
                let len = u32::from_be_bytes(self.header[1..].try_into().expect("4 bytes")) as usize;
                if len > self.max {
                    return Err(len);
                }
                self.body_left = len;
            }
        }
        debug_assert!(self.header_len < HEADER_BYTES);
        Ok(())
    }
}

impl HttpBody for FrameLimit {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(len) = self.scan(data) {
                self.failed = true;
                return Poll::Ready(Some(Err(Box::new(too_large(len, self.max)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0];
        f.extend(len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn follows_frames_split_anywhere() {
        let data: Vec<u8> = [frame(3), frame(0), frame(10), frame(11)].concat();
        for split in 0..data.len() {
            let mut l = FrameLimit::new(Body::empty(), 10);
            let first = l.scan(&data[..split]);
            let second = first.and_then(|()| l.scan(&data[split..]));
            assert_eq!(first.and(second), Err(11), "split at {split}");
        }
        let mut l = FrameLimit::new(Body::empty(), 10);
        assert_eq!(l.scan(&[frame(10), frame(1)].concat()), Ok(()));
        assert_eq!((l.header_len, l.body_left), (0, 0));
    }
}
