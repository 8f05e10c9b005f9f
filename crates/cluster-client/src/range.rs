//! [`RangeStream`]: a range read page by page for the caller.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio_stream::Stream;

use crate::client::{Client, Consistency, Page};
use crate::error::{Error, Result};

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
    /// The start of the page being fetched, to check the reply against.
    fetching_start: Bytes,
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
            fetching_start: Bytes::new(),
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
                let page = page.and_then(|page| {
                    check_page(&this.fetching_start, &this.end, &page).map_err(|reason| Error::Protocol {
                        request: "Range",
                        reason,
                    })?;
                    Ok(page)
                });
                match page {
                    Ok(page) => {
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
            this.fetching_start = start.clone();
            let client = this.client.clone();
            let (end, limit, consistency) = (this.end.clone(), this.page_size, this.consistency);
            this.fetching = Some(Box::pin(async move {
                client.range_page(start, end, limit, consistency).await
            }));
        }
    }
}

/// Why a page the server sent for `start <= key < end` cannot be right, if
/// it cannot: keys out of order or outside the range, or a `next_start`
/// that would not move the stream forward (which would loop forever or
/// repeat pairs).
fn check_page(start: &Bytes, end: &Bytes, page: &Page) -> Result<(), String> {
    let mut previous: Option<&Bytes> = None;
    for (key, _) in &page.pairs {
        if key < start || (!end.is_empty() && key >= end) {
            return Err(format!(
                "key {key:?} is outside the requested range [{start:?}, {end:?})"
            ));
        }
        if let Some(previous) = previous.filter(|previous| key <= *previous) {
            return Err(format!(
                "key {key:?} follows {previous:?}: keys are not in ascending order"
            ));
        }
        previous = Some(key);
    }
    if let Some(next) = &page.next_start {
        // An empty page may resume past the requested start, never at it.
        let floor = previous.unwrap_or(start);
        if next <= floor {
            return Err(format!(
                "next_start {next:?} is not past {floor:?}, so the range would not advance"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&'static str], next: Option<&'static str>) -> Page {
        Page {
            pairs: keys.iter().map(|k| (Bytes::from(*k), Bytes::new())).collect(),
            next_start: next.map(Bytes::from),
        }
    }

    fn check(start: &'static str, end: &'static str, page: &Page) -> Result<(), String> {
        check_page(&Bytes::from(start), &Bytes::from(end), page)
    }

    #[test]
    fn well_formed_pages_pass() {
        // The pages a correct server sends, including an empty page that resumes later.
        assert!(check("a", "z", &page(&["a", "b"], Some("c"))).is_ok());
        assert!(check("a", "", &page(&["a", "b"], None)).is_ok());
        assert!(check("", "", &page(&[], Some("m"))).is_ok());
        assert!(check("b", "z", &page(&["b"], Some("b\0"))).is_ok());
    }

    #[test]
    fn a_page_that_would_not_advance_is_refused() {
        // A next_start at or before the last key repeats pairs or loops forever.
        assert!(check("a", "z", &page(&["a", "b"], Some("b"))).is_err());
        assert!(check("a", "z", &page(&["a", "b"], Some("a"))).is_err());
        assert!(check("m", "z", &page(&[], Some("m"))).is_err());
        assert!(check("", "", &page(&[], Some(""))).is_err());
    }

    #[test]
    fn keys_out_of_order_or_out_of_range_are_refused() {
        // A caller relies on the order and bounds of what the stream yields.
        assert!(check("a", "z", &page(&["b", "a"], None)).is_err());
        assert!(check("a", "z", &page(&["b", "b"], None)).is_err());
        assert!(check("c", "z", &page(&["b"], None)).is_err());
        assert!(check("a", "c", &page(&["c"], None)).is_err());
    }
}
