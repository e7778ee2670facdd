//! The one response/request body type that flows through the proxy (a leaf).
//!
//! A hit is a `Full` body: one refcounted `Bytes`, no allocation, no boxing, so the hit path
//! costs what hyper costs. Everything that streams (pass-through, bodies too large to store,
//! request bodies going upstream) is a boxed stream; the box is paid only off the hit path.
//!
//! Upstream bodies are wrapped in [`Deadline`] (idle and total deadlines that hold even when
//! nobody polls the body) around [`Holding`] (the connection permit), so a client that stops
//! reading, or an upstream that trickles or stalls, cannot pin a connection permit.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Errors carried by streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response or request body: a single buffer, or a stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let b = bytes.into();
        if b.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(b))
        }
    }

    /// Box any body whose errors convert into [`BoxError`].
    pub fn stream<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body::Stream(body.map_err(Into::into).boxed_unsync())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, Bytes::len)),
            Body::Stream(_) => f.write_str("Body::Stream"),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Chunks already read (while trying to buffer a response for the cache) followed by the
    /// rest of the stream: how a response that turned out too large to store is still sent
    /// whole, without ever holding more than `max_entry_size` of it.
    pub struct Prefixed<B> {
        prefix: std::collections::VecDeque<Bytes>,
        #[pin]
        rest: B,
    }
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Vec<Bytes>, rest: B) -> Self {
        Prefixed {
            prefix: prefix.into(),
            rest,
        }
    }
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

pin_project_lite::pin_project! {
    /// A body that holds something (a connection permit) until it is finished or dropped.
    pub struct Holding<B, T> {
        #[pin]
        inner: B,
        held: Option<T>,
    }
}

impl<B, T> Holding<B, T> {
    pub fn new(inner: B, held: T) -> Self {
        Holding {
            inner,
            held: Some(held),
        }
    }
}

impl<B, T> http_body::Body for Holding<B, T>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.held.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a [`Deadline`] body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// No frame got through for this long: the sender stalled, or the reader stopped reading.
    #[error("body made no progress for {0:?}")]
    Idle(Duration),
    /// The whole body took longer than this.
    #[error("body not finished within {0:?}")]
    Total(Duration),
}

/// The state a [`Deadline`] body shares with its watchdog.
struct Watched<B> {
    /// `None` once the body ended, failed or was cut: dropping it is what releases whatever
    /// it holds (the upstream connection and its permit).
    inner: Option<B>,
    /// Set when the watchdog cut the body; reported once to the next poll.
    cut: Option<Cut>,
    last_progress: Instant,
    waker: Option<Waker>,
}

/// A body with an idle deadline (no frame delivered for `idle`) and a total deadline, both
/// enforced by a watchdog task, **not** by the poller.
///
/// A body that nobody polls cannot time itself out: hyper stops polling a response body while
/// the client does not read (a full socket buffer over HTTP/1, a zero flow-control window over
/// HTTP/2), and a timer inside `poll_frame` would never fire. So the watchdog drops the inner
/// body itself when a deadline passes, which closes the upstream connection and releases its
/// permit at once, then wakes the last poller, which sees [`Cut`] as the body's error.
/// The watchdog ends with the body (it is told on drop), so finished bodies leave no timers.
pub struct Deadline<B> {
    shared: Arc<Mutex<Watched<B>>>,
    done: Arc<Notify>,
}

impl<B: Send + 'static> Deadline<B> {
    /// Start watching `inner`. Needs a tokio runtime (the watchdog is a task).
    pub fn new(inner: B, idle: Duration, total: Duration) -> Self {
        let started = Instant::now();
        let shared = Arc::new(Mutex::new(Watched {
            inner: Some(inner),
            cut: None,
            last_progress: started,
            waker: None,
        }));
        let done = Arc::new(Notify::new());
        tokio::spawn(watchdog(
            Arc::downgrade(&shared),
            done.clone(),
            started + total,
            idle,
            total,
        ));
        Deadline { shared, done }
    }
}

/// Sleep until the next deadline; cut the body if it passed, else sleep again.
async fn watchdog<B>(
    shared: Weak<Mutex<Watched<B>>>,
    done: Arc<Notify>,
    total_at: Instant,
    idle: Duration,
    total: Duration,
) {
    let mut at = total_at.min(Instant::now() + idle);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = done.notified() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut w = shared.lock();
        if w.inner.is_none() {
            return;
        }
        let now = Instant::now();
        let cut = if now >= total_at {
            Cut::Total(total)
        } else if now >= w.last_progress + idle {
            Cut::Idle(idle)
        } else {
            at = total_at.min(w.last_progress + idle);
            continue;
        };
        let inner = w.inner.take();
        w.cut = Some(cut);
        let waker = w.waker.take();
        drop(w);
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
        return;
    }
}

impl<B> Drop for Deadline<B> {
    fn drop(&mut self) {
        self.done.notify_one();
    }
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut w = this.shared.lock();
        let Some(inner) = w.inner.as_mut() else {
            return Poll::Ready(w.cut.take().map(|c| Err(c.into())));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                w.last_progress = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                // Ended or failed: release what the body holds now, and stop the watchdog.
                w.inner = None;
                drop(w);
                this.done.notify_one();
                Poll::Ready(end.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !w.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
                    w.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let w = self.shared.lock();
        match &w.inner {
            Some(inner) => inner.is_end_stream(),
            None => w.cut.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.shared
            .lock()
            .inner
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}
