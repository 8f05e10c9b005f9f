//! The known endpoints, their lazily made channels, and the cached leader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::tls::ClientTls;

/// Endpoints learned from hints, at most, beyond the ones given. Bounds the
/// list when a misbehaving server keeps naming new addresses.
pub const LEARNED_ENDPOINTS_MAX: usize = 64;

/// The endpoint list shared by every clone of a client.
#[derive(Debug)]
pub(crate) struct Endpoints {
    state: Mutex<State>,
    /// Round-robin position for requests any node may serve.
    spread: AtomicUsize,
    connect_timeout: Duration,
    /// TLS to every node; `None`: plaintext.
    tls: Option<ClientTls>,
}

#[derive(Debug)]
struct State {
    /// `host:port` of every known endpoint, given ones first.
    addrs: Vec<String>,
    /// How many of `addrs` were given (the rest were learned from hints).
    given: usize,
    /// Channels made so far, by address.
    channels: HashMap<String, Channel>,
    /// The endpoint believed to lead, if any.
    leader: Option<String>,
}

/// Strips an `http://` or `https://` prefix (TLS is chosen by the
/// client's settings, not the prefix) and checks the rest looks like
/// `host:port`.
pub(crate) fn normalize(addr: &str) -> Result<String> {
    let trimmed = addr.trim();
    let bare = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let bad = |reason: &str| Error::BadEndpoint {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = bare.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok(bare.to_owned())
}

impl Endpoints {
    /// Endpoints for these (already normalized, non-empty, deduplicated)
    /// addresses.
    pub(crate) fn new(addrs: Vec<String>, connect_timeout: Duration, tls: Option<ClientTls>) -> Endpoints {
        assert!(!addrs.is_empty(), "an endpoint list is never empty");
        let start = fastrand::usize(..addrs.len());
        Endpoints {
            state: Mutex::new(State {
                given: addrs.len(),
                addrs,
                channels: HashMap::new(),
                leader: None,
            }),
            spread: AtomicUsize::new(start),
            connect_timeout,
            tls,
        }
    }

    /// Whether connections are plaintext (no TLS configured).
    pub(crate) fn is_plaintext(&self) -> bool {
        self.tls.is_none()
    }

    /// Every known endpoint, given ones first.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.state.lock().addrs.clone()
    }

    /// The cached leader, if any.
    pub(crate) fn leader(&self) -> Option<String> {
        self.state.lock().leader.clone()
    }

    /// Where a request that only the leader serves goes first.
    pub(crate) fn leader_or_first(&self) -> String {
        let state = self.state.lock();
        match &state.leader {
            Some(leader) => leader.clone(),
            None => state.addrs[self.spread.load(Ordering::Relaxed) % state.addrs.len()].clone(),
        }
    }

    /// Where a request any node serves goes first: round robin.
    pub(crate) fn spread(&self) -> String {
        let state = self.state.lock();
        let i = self.spread.fetch_add(1, Ordering::Relaxed);
        state.addrs[i % state.addrs.len()].clone()
    }

    /// The endpoint after `addr` in the list (the first if `addr` is not in
    /// it). Also forgets `addr` as the leader.
    pub(crate) fn next_after(&self, addr: &str) -> String {
        let mut state = self.state.lock();
        if state.leader.as_deref() == Some(addr) {
            state.leader = None;
        }
        let next = match state.addrs.iter().position(|a| a == addr) {
            Some(i) => (i + 1) % state.addrs.len(),
            None => 0,
        };
        // Later requests without a leader start here, not at a dead node.
        self.spread.store(next, Ordering::Relaxed);
        state.addrs[next].clone()
    }

    /// Records `addr` as the leader, adding it to the list if it is new.
    pub(crate) fn set_leader(&self, addr: &str) {
        let mut state = self.state.lock();
        if !state.addrs.iter().any(|a| a == addr) {
            if state.addrs.len() >= state.given + LEARNED_ENDPOINTS_MAX {
                // Drop the oldest learned address (never a given one).
                let oldest = state.given;
                let dropped = state.addrs.remove(oldest);
                state.channels.remove(&dropped);
            }
            state.addrs.push(addr.to_owned());
        }
        state.leader = Some(addr.to_owned());
    }

    /// The channel to `addr`, made on first use. Connecting happens on the
    /// first call through it, so this needs no network; it must run inside a
    /// tokio runtime.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel> {
        let mut state = self.state.lock();
        if let Some(channel) = state.channels.get(addr) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Error::BadEndpoint {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = tls.apply(endpoint)?;
        }
        let channel = endpoint.connect_lazy();
        state.channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(addrs: &[&str]) -> Endpoints {
        Endpoints::new(
            addrs.iter().map(|a| (*a).to_owned()).collect(),
            Duration::from_secs(1),
            None,
        )
    }

    #[test]
    fn addresses_are_normalized_and_checked() {
        assert_eq!(
            normalize("http://127.0.0.1:7001/").ok().as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(normalize(" localhost:1 ").ok().as_deref(), Some("localhost:1"));
        assert!(normalize("127.0.0.1").is_err());
        assert!(normalize(":7001").is_err());
        assert!(normalize("host:99999").is_err());
    }

    #[test]
    fn rotation_wraps_and_forgets_a_failed_leader() {
        let e = endpoints(&["a:1", "b:2", "c:3"]);
        e.set_leader("b:2");
        assert_eq!(e.leader_or_first(), "b:2");
        assert_eq!(e.next_after("b:2"), "c:3");
        assert_eq!(e.leader(), None);
        assert_eq!(e.next_after("c:3"), "a:1");
        assert_eq!(
            e.leader_or_first(),
            "a:1",
            "leaderless requests start where rotation stopped"
        );
        assert_eq!(e.next_after("zz:9"), "a:1");
    }

    #[test]
    fn hinted_leaders_join_the_list_boundedly() {
        let e = endpoints(&["a:1"]);
        e.set_leader("new:9");
        assert_eq!(e.addrs(), vec!["a:1".to_owned(), "new:9".to_owned()]);
        for i in 0..(LEARNED_ENDPOINTS_MAX + 10) {
            e.set_leader(&format!("h:{i}"));
        }
        let addrs = e.addrs();
        assert_eq!(addrs.len(), 1 + LEARNED_ENDPOINTS_MAX);
        assert_eq!(addrs[0], "a:1", "given endpoints are never dropped");
    }
}
