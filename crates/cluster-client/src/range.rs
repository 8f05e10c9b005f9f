//! [`RangeStream`]: a range read page by page for the caller.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio_stream::Stream;

use crate::client::{Client, Consistency, Page};
use crate::error::Result;

type PageFuture = Pin<Box<dyn Future<Output = Result<Page>> + Send>>;

/// The pairs with `start <= key < end`, fetched a page at a time as the
/// stream is polled. Each page is read with the chosen consistency on its
/// own: the stream as a whole is not one snapshot. After an error the
/// stream ends.
pub struct RangeStream {
    client: Client,
    end: Bytes,
    page_size: u32,
    consistency: Consistency,
    /// The start of the next page to fetch; `None` when no page is left.
    next_start: Option<Bytes>,
    buffered: VecDeque<(Bytes, Bytes)>,
    fetching: Option<PageFuture>,
}

impl std::fmt::Debug for RangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeStream")
            .field("end", &self.end)
            .field("next_start", &self.next_start)
            .field("buffered", &self.buffered.len())
            .field("fetching", &self.fetching.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Every pair with `start <= key < end` in key order (empty `start`:
    /// from the beginning; empty `end`: to the end), linearizable page by
    /// page, fetched [`crate::ClientBuilder::range_page_size`] pairs at a time.
    pub fn range(&self, start: impl Into<Bytes>, end: impl Into<Bytes>) -> RangeStream {
        self.range_with(start, end, Consistency::Linearizable)
    }

    /// Like [`Client::range`] with the given consistency.
    pub fn range_with(&self, start: impl Into<Bytes>, end: impl Into<Bytes>, consistency: Consistency) -> RangeStream {
        RangeStream {
            client: self.clone(),
            end: end.into(),
            page_size: self.inner.range_page_size,
            consistency,
            next_start: Some(start.into()),
            buffered: VecDeque::new(),
            fetching: None,
        }
    }
}

impl Stream for RangeStream {
    type Item = Result<(Bytes, Bytes)>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pair) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(pair)));
            }
            if let Some(fetching) = this.fetching.as_mut() {
                let page = match fetching.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(page) => page,
                };
                this.fetching = None;
                match page {
                    Ok(page) => {
                        if let (Some(next), Some((last, _))) = (&page.next_start, page.pairs.last()) {
                            assert!(next > last, "a range page's next_start is not past its last key");
                        }
                        this.buffered.extend(page.pairs);
                        this.next_start = page.next_start;
                        continue;
                    }
                    Err(error) => {
                        this.next_start = None;
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
            let Some(start) = this.next_start.take() else {
                return Poll::Ready(None);
            };
            let client = this.client.clone();
            let (end, limit, consistency) = (this.end.clone(), this.page_size, this.consistency);
            this.fetching = Some(Box::pin(async move {
                client.range_page(start, end, limit, consistency).await
            }));
        }
    }
}
