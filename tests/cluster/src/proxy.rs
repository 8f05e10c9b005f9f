//! A fault-injecting TCP proxy in front of each node's peer address.
//!
//! # Why a proxy per node, and how it knows who is calling
//!
//! Peers dial the address in the Raft membership (the node's `--advertise`),
//! and every node dials the same address for node `j`. So node `j`
//! advertises its proxy's address `P_j` and listens on a real port `R_j`;
//! the proxy forwards `P_j -> R_j`. Test clients talk to `R_j` directly.
//!
//! To cut a *directed* link `i -> j` the proxy of `j` must know which node
//! opened a connection. Source ports are random, so on every accept the
//! proxy looks the caller's socket up in `/proc/net/tcp` (its inode) and
//! finds the node process holding that socket in `/proc/<pid>/fd` (the
//! harness keeps the pid of every node). A connection from anything that is
//! not a node (a test client following a leader hint) always passes: faults
//! are between nodes only, clients can reach every node.
//!
//! # What a link mode does
//!
//! The mode of `a -> b` governs the bytes that travel from node `a` to node
//! `b`, on every connection between them, whoever opened it:
//!
//! - [`LinkMode::Pass`]: forwarded at once.
//! - [`LinkMode::Delay`]: each chunk is held for the delay before it is
//!   written (so an RPC is late by about the delay; a large transfer is also
//!   slowed, by the delay per chunk of up to [`CHUNK_BYTES`]).
//! - [`LinkMode::Drop`]: bytes are held, not delivered, until the mode
//!   changes (the proxy stops reading, so the kernel buffers fill and the
//!   sender blocks): a partition as TCP sees it. Nothing is lost or
//!   reordered, so the HTTP/2 streams stay valid; RPCs time out at the
//!   sender. When the link heals, the late bytes arrive (stale Raft
//!   messages, which Raft must tolerate).
//!
//! Cutting `a -> b` alone is a one-way partition: `b` still reaches `a`,
//! but the answers from `a` to `b`'s requests are held too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read from one side before they are written to the other, at most.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// How long connecting to the real node port may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A node id, as in the Raft membership.
pub type NodeId = u64;

/// What happens to the bytes of one directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forwarded at once.
    Pass,
    /// Each chunk held this long before it is forwarded.
    Delay(Duration),
    /// Held (not delivered) until the mode changes.
    Drop,
}

/// The mode of every directed link between nodes, shared by all proxies.
#[derive(Debug)]
pub struct Links {
    modes: Mutex<HashMap<(NodeId, NodeId), LinkMode>>,
    /// Bumped on every change, so held bytes re-check their link.
    changed: watch::Sender<u64>,
    /// The pid of every running node, to tell which node opened a connection.
    pids: Mutex<HashMap<u32, NodeId>>,
    /// Connections accepted: (from a node, from elsewhere).
    accepted: Mutex<(u64, u64)>,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            modes: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            pids: Mutex::new(HashMap::new()),
            accepted: Mutex::new((0, 0)),
        }
    }
}

impl Links {
    /// The mode of `from -> to` (default [`LinkMode::Pass`]).
    pub fn mode(&self, from: NodeId, to: NodeId) -> LinkMode {
        let modes = self.modes.lock().expect("links lock poisoned");
        modes.get(&(from, to)).copied().unwrap_or(LinkMode::Pass)
    }

    /// Sets the mode of `from -> to`.
    pub fn set(&self, from: NodeId, to: NodeId, mode: LinkMode) {
        self.modes.lock().expect("links lock poisoned").insert((from, to), mode);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sets the mode of both `a -> b` and `b -> a`.
    pub fn set_both(&self, a: NodeId, b: NodeId, mode: LinkMode) {
        self.set(a, b, mode);
        self.set(b, a, mode);
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.modes.lock().expect("links lock poisoned").clear();
        self.changed.send_modify(|v| *v += 1);
    }

    /// Records that process `pid` is node `id` (replacing its old pid).
    pub fn set_pid(&self, id: NodeId, pid: Option<u32>) {
        let mut pids = self.pids.lock().expect("pids lock poisoned");
        pids.retain(|_, node| *node != id);
        if let Some(pid) = pid {
            pids.insert(pid, id);
        }
    }

    /// Connections accepted so far: (opened by a node, opened by others).
    pub fn accepted(&self) -> (u64, u64) {
        *self.accepted.lock().expect("accepted lock poisoned")
    }

    fn pids(&self) -> Vec<(u32, NodeId)> {
        let pids = self.pids.lock().expect("pids lock poisoned");
        pids.iter().map(|(pid, id)| (*pid, *id)).collect()
    }

    fn count_accept(&self, from_node: bool) {
        let mut accepted = self.accepted.lock().expect("accepted lock poisoned");
        if from_node {
            accepted.0 += 1;
        } else {
            accepted.1 += 1;
        }
    }
}

/// The proxy in front of one node: accepts on `listen`, forwards to `target`.
#[derive(Debug)]
pub struct Proxy {
    /// The address peers dial (the node's `--advertise`).
    pub listen: SocketAddr,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts the proxy of node `node` on an already-bound `listener`.
    pub fn start(node: NodeId, listener: TcpListener, target: SocketAddr, links: Arc<Links>) -> std::io::Result<Proxy> {
        let listen = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let links = links.clone();
                tokio::spawn(async move {
                    let from = identify_source(peer, listen, &links).await;
                    links.count_accept(from.is_some());
                    let _ = serve_connection(inbound, target, node, from, links).await;
                });
            }
        });
        Ok(Proxy { listen, task })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    inbound: TcpStream,
    target: SocketAddr,
    node: NodeId,
    from: Option<NodeId>,
    links: Arc<Links>,
) -> std::io::Result<()> {
    let outbound = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::other("upstream connect timed out"))??;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // Caller -> node: the link from -> node. Node -> caller: node -> from.
    let forward = pump(in_read, out_write, from.map(|f| (f, node)), links.clone());
    let backward = pump(out_read, in_write, from.map(|f| (node, f)), links);
    // When either side closes or fails, drop both: the connection is over.
    tokio::select! {
        _ = forward => {},
        _ = backward => {},
    }
    Ok(())
}

/// Copies `reader` to `writer`, applying the mode of `link` (`None`: not
/// between nodes, always passes) to every chunk.
async fn pump(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    link: Option<(NodeId, NodeId)>,
    links: Arc<Links>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut changed = links.changed.subscribe();
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        // Re-check the mode until the chunk may go: a dropped link holds it.
        loop {
            let mode = link.map_or(LinkMode::Pass, |(from, to)| links.mode(from, to));
            match mode {
                LinkMode::Pass => break,
                LinkMode::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                LinkMode::Drop => {
                    changed.borrow_and_update();
                    // The watch sender lives in `links`, which we hold: it
                    // cannot close while we wait.
                    if changed.changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        writer.write_all(&buffer[..read]).await?;
    }
}

/// Which node (by the pids in `links`) opened the connection from `peer` to
/// `local`; `None` when it is not a node or cannot be told.
async fn identify_source(peer: SocketAddr, local: SocketAddr, links: &Links) -> Option<NodeId> {
    let pids = links.pids();
    tokio::task::spawn_blocking(move || {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let inode = socket_inode(&table, peer, local)?;
        owner_of_socket(inode, &pids)
    })
    .await
    .ok()
    .flatten()
}

/// The address as `/proc/net/tcp` writes it: the IPv4 address as a u32 in
/// host byte order, in hex, then the port in hex.
fn proc_net_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The inode of the socket whose local address is `local_of_socket` and
/// remote address is `remote_of_socket`, from the text of `/proc/net/tcp`.
fn socket_inode(table: &str, local_of_socket: SocketAddr, remote_of_socket: SocketAddr) -> Option<u64> {
    let (want_local, want_remote) = (proc_net_addr(local_of_socket)?, proc_net_addr(remote_of_socket)?);
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 9 && fields[1] == want_local && fields[2] == want_remote {
            fields[9].parse().ok().filter(|inode| *inode != 0)
        } else {
            None
        }
    })
}

/// The node whose process holds socket `inode`.
fn owner_of_socket(inode: u64, pids: &[(u32, NodeId)]) -> Option<NodeId> {
    let wanted = format!("socket:[{inode}]");
    pids.iter().find_map(|(pid, id)| {
        let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        entries
            .flatten()
            .any(|entry| std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
            .then_some(*id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_are_little_endian_hex() {
        // /proc/net/tcp writes 127.0.0.1:8080 as 0100007F:1F90 on x86.
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_addr(addr).as_deref(), Some("0100007F:1F90"));
        }
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 0100007F:1F90 0100007F:0050 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n";
        let remote: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        if cfg!(target_endian = "little") {
            assert_eq!(socket_inode(table, addr, remote), Some(4242));
            assert_eq!(socket_inode(table, remote, addr), None);
        }
    }

    #[tokio::test]
    async fn the_proxy_names_the_process_that_connected() {
        // The whole partition design rests on telling the calling node.
        let links = Arc::new(Links::default());
        links.set_pid(7, Some(std::process::id()));
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let local = server.local_addr().expect("addr");
        let client = TcpStream::connect(local).await.expect("connect");
        let (_accepted, peer) = server.accept().await.expect("accept");
        assert_eq!(peer, client.local_addr().expect("addr"));
        assert_eq!(identify_source(peer, local, &links).await, Some(7));
        links.set_pid(7, None);
        assert_eq!(identify_source(peer, local, &links).await, None);
    }

    #[tokio::test]
    async fn a_dropped_link_holds_bytes_until_healed() {
        // Drop must delay, not lose, bytes: lost bytes would corrupt HTTP/2.
        let links = Arc::new(Links::default());
        links.set_pid(1, Some(std::process::id()));
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = upstream.local_addr().expect("addr");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Proxy::start(2, listener, target, links.clone()).expect("proxy");
        links.set(1, 2, LinkMode::Drop);
        let mut client = TcpStream::connect(proxy.listen).await.expect("connect");
        let (mut served, _) = upstream.accept().await.expect("accept");
        client.write_all(b"hello").await.expect("write");
        let mut buffer = [0u8; 5];
        let early = tokio::time::timeout(Duration::from_millis(200), served.read_exact(&mut buffer)).await;
        assert!(early.is_err(), "bytes crossed a dropped link");
        links.heal();
        tokio::time::timeout(Duration::from_secs(2), served.read_exact(&mut buffer))
            .await
            .expect("bytes arrive after heal")
            .expect("read");
        assert_eq!(&buffer, b"hello");
    }
}
