//! Who a client is for the per-client limits, and each listener's pool of
//! pending connections (accepted, no complete ClientHello or request head
//! yet).
//!
//! A client is an IPv4 address, or an IPv6 /64 (one subscriber usually holds
//! a whole /64, so counting single IPv6 addresses would let one user hold
//! 2^64 "clients"); both prefix lengths are configurable.
//!
//! A full pool does not refuse the newcomer, which would let a few silent
//! clients lock everyone out: it closes the oldest pending connection of the
//! client holding the most, so an attacker's many connections make room for
//! others, never the other way round.

use crate::config::Limits;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A client as the limits count it: its address with the host bits cleared
/// beyond the configured prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// `ip` must already be unmapped (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(ip: IpAddr, limits: &Limits) -> ClientKey {
        ClientKey(match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(limits.client_prefix_v4)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(limits.client_prefix_v6)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        })
    }
}

/// How a pending connection is closed when the pool evicts it: a task's
/// token, or a message to the connection engine that holds it.
pub trait Evict: Send {
    fn evict(self);
}

impl Evict for CancellationToken {
    fn evict(self) {
        self.cancel();
    }
}

/// The pending connections of one listener. Each is registered with the
/// handle that closes it if it is evicted.
pub struct PendingPool<E = CancellationToken> {
    state: Mutex<PoolState<E>>,
}

impl<E> Default for PendingPool<E> {
    fn default() -> Self {
        PendingPool { state: Mutex::new(PoolState { clients: HashMap::new(), total: 0, next_id: 0 }) }
    }
}

struct PoolState<E> {
    /// Per client, its pending connections, oldest first.
    clients: HashMap<ClientKey, VecDeque<(u64, E)>>,
    total: usize,
    next_id: u64,
}

/// A connection's place in a pool, given back with [`PendingPool::release`]
/// with its client. Never 0, so that 0 can stand for "none".
pub type PendingId = u64;

/// Why a pending connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFull;

impl<E: Evict> PendingPool<E> {
    /// Registers a pending connection of `client`; `evict` is cancelled if
    /// it is later closed to make room. Refused only when the client itself
    /// already holds `per_client` pending connections (`None`: no such
    /// limit, for a trusted load balancer). When the pool holds `capacity`,
    /// the oldest pending connection of the client holding the most is
    /// evicted first (of equal holders, the one whose oldest is oldest).
    pub fn admit(
        &self,
        client: ClientKey,
        per_client: Option<usize>,
        capacity: usize,
        evict: E,
    ) -> Result<PendingId, ClientFull> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = state.clients.get(&client).map_or(0, VecDeque::len);
        if per_client.is_some_and(|max| held >= max) {
            return Err(ClientFull);
        }
        while state.total >= capacity.max(1) {
            state.evict_one();
        }
        state.next_id += 1;
        let id = state.next_id;
        state.total += 1;
        state.clients.entry(client).or_default().push_back((id, evict));
        Ok(id)
    }

    /// Gives a place back (the connection's hello arrived, or it ended). A
    /// place already taken by an eviction is not given back twice.
    pub fn release(&self, client: ClientKey, slot: PendingId) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = state.clients.get_mut(&client) else {
            return;
        };
        let Some(at) = queue.iter().position(|(id, _)| *id == slot) else {
            return;
        };
        queue.remove(at);
        if queue.is_empty() {
            state.clients.remove(&client);
        }
        state.total -= 1;
    }

    /// Pending connections held now.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<E: Evict> PoolState<E> {
    /// Closes the oldest pending connection of the client holding the most.
    /// A scan of the clients: it runs only when the pool is full, and the
    /// pool holds at most `capacity` clients.
    fn evict_one(&mut self) {
        let victim = self
            .clients
            .iter()
            .filter_map(|(key, queue)| queue.front().map(|(oldest, _)| (queue.len(), std::cmp::Reverse(*oldest), *key)))
            .max();
        let Some((_, _, key)) = victim else {
            self.total = 0;
            return;
        };
        let queue = self.clients.get_mut(&key).expect("the victim was just found");
        if let Some((_, handle)) = queue.pop_front() {
            handle.evict();
            self.total -= 1;
        }
        if queue.is_empty() {
            self.clients.remove(&key);
        }
    }
}

/// Bytes of unfinished hellos and request heads every connection may hold
/// whatever the budget: one full TLS record, more than any real ClientHello
/// (Chromium's with a post-quantum key share is about 1.9 KB).
pub const BUFFER_FLOOR: usize = 16 * 1024 + 5;

/// The process-wide budget for what pending connections buffer beyond
/// [`BUFFER_FLOOR`] each (`limits.max_buffered_bytes`). One process, one
/// memory: a static rather than per-server state.
static BUFFERED: AtomicUsize = AtomicUsize::new(0);
/// Set when a buffer that used the budget is freed: the allocator may then
/// hold memory worth giving back (see [`give_back_memory`]).
static FREED_LARGE: AtomicBool = AtomicBool::new(false);

/// What one connection's buffer holds of the budget; given back on drop.
#[derive(Debug, Default)]
pub struct BufferCharge {
    charged: usize,
}

/// The budget is spent: the connection cannot buffer more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpent;

impl BufferCharge {
    /// Makes sure a buffer may grow to `capacity` bytes, taking from the
    /// budget of `limit` bytes what it needs beyond the floor.
    pub fn cover(&mut self, capacity: usize, limit: usize) -> Result<(), BudgetSpent> {
        let wanted = capacity.saturating_sub(BUFFER_FLOOR);
        if wanted <= self.charged {
            return Ok(());
        }
        let more = wanted - self.charged;
        let before = BUFFERED.fetch_add(more, Ordering::AcqRel);
        if before + more > limit {
            BUFFERED.fetch_sub(more, Ordering::AcqRel);
            return Err(BudgetSpent);
        }
        self.charged = wanted;
        Ok(())
    }
}

impl Drop for BufferCharge {
    fn drop(&mut self) {
        if self.charged > 0 {
            BUFFERED.fetch_sub(self.charged, Ordering::AcqRel);
            FREED_LARGE.store(true, Ordering::Release);
        }
    }
}

/// Bytes of the budget in use now.
pub fn buffered() -> usize {
    BUFFERED.load(Ordering::Acquire)
}

/// Gives memory freed by large buffers back to the system, if any were
/// freed since the last call. glibc's malloc keeps freed heap memory for
/// reuse; after an attack of large unfinished hellos that is hundreds of
/// megabytes that would stay resident. `malloc_trim` releases it.
pub fn give_back_memory() {
    if FREED_LARGE.swap(false, Ordering::AcqRel) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim has no preconditions; it only returns free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

// ---------------------------------------------------------------------------
// Descriptors.

/// `limits.max_connections` when not set, if the descriptors allow.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Descriptors one connection may hold: the client's socket and the server's.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: listeners, the relay's pooled
/// pipes (64 of 2 each), health checks, the metrics endpoint, logs, DNS.
const FDS_RESERVED: u64 = 192;

/// The open files limit the process runs with, once [`raise_open_files_limit`] ran.
static OPEN_FILES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Raises the soft limit on open files to the hard limit, as nginx's
/// `worker_rlimit_nofile` and Go programs do: the soft limit of a shell
/// (often 1,024) is far below what a gateway needs, and systemd sets both.
/// Returns (soft, hard) as they are afterwards.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let _ = OPEN_FILES.set(limit.rlim_cur);
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// The process's (soft, hard) open files limits.
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Descriptors `connections` need, the reserve included.
pub fn descriptors_for(connections: usize) -> u64 {
    connections as u64 * FDS_PER_CONNECTION + FDS_RESERVED
}

/// Connections that fit in `open_files` descriptors.
pub fn connections_for(open_files: u64) -> usize {
    (open_files.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION) as usize
}

impl Limits {
    /// Connections open at once: `limits.max_connections`, or, unset, 20,000
    /// or what the open files limit holds if that is less.
    pub fn max_connections(&self) -> usize {
        self.max_connections_set.unwrap_or_else(|| {
            OPEN_FILES.get().map_or(DEFAULT_MAX_CONNECTIONS, |&n| connections_for(n).clamp(1, DEFAULT_MAX_CONNECTIONS))
        })
    }

    /// Whether a configured `max_connections` fits in `open_files`
    /// descriptors; the error says what to change.
    pub fn check_descriptors(&self, open_files: u64) -> Result<(), String> {
        match self.max_connections_set {
            Some(wanted) if descriptors_for(wanted) > open_files => Err(format!(
                "limits.max_connections is {wanted}, which needs about {} open files (2 per connection and {FDS_RESERVED} \
                 for the rest), but the limit is {open_files}: raise it (LimitNOFILE= in systemd, ulimit -n) or \
                 lower limits.max_connections to at most {}",
                descriptors_for(wanted),
                connections_for(open_files)
            )),
            _ => Ok(()),
        }
    }
}

/// An error that says this machine or process is out of a resource (open
/// files, memory, buffers), not that the peer is at fault: it must never
/// count against a backend server's health.
pub fn is_local_resource_error(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> ClientKey {
        ClientKey::of(ip.parse().unwrap(), &Limits::default())
    }

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_64() {
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        let wide = Limits { client_prefix_v4: 24, client_prefix_v6: 48, ..Limits::default() };
        let of = |ip: &str| ClientKey::of(ip.parse().unwrap(), &wide);
        assert_eq!(of("192.0.2.1"), of("192.0.2.200"));
        assert_eq!(of("2001:db8:1:2::1"), of("2001:db8:1:ffff::1"));
        let exact = Limits { client_prefix_v6: 128, ..Limits::default() };
        assert_ne!(ClientKey::of("::1".parse().unwrap(), &exact), ClientKey::of("::2".parse().unwrap(), &exact));
    }

    #[test]
    fn a_full_pool_evicts_the_oldest_of_the_biggest_holder() {
        let pool = PendingPool::default();
        let tokens: Vec<CancellationToken> = (0..5).map(|_| CancellationToken::new()).collect();
        let (a, b, c) = (key("192.0.2.1"), key("192.0.2.2"), key("192.0.2.3"));
        let a0 = pool.admit(a, Some(10), 4, tokens[0].clone()).unwrap();
        let _b0 = pool.admit(b, Some(10), 4, tokens[1].clone()).unwrap();
        let _a1 = pool.admit(a, Some(10), 4, tokens[2].clone()).unwrap();
        let _a2 = pool.admit(a, Some(10), 4, tokens[3].clone()).unwrap();
        assert_eq!(pool.len(), 4);
        // Full: the newcomer gets in, a's oldest goes.
        let _c0 = pool.admit(c, Some(10), 4, tokens[4].clone()).unwrap();
        assert!(tokens[0].is_cancelled());
        assert!(tokens[1..].iter().all(|t| !t.is_cancelled()));
        assert_eq!(pool.len(), 4);
        // The evicted connection's release does not count twice.
        pool.release(a, a0);
        assert_eq!(pool.len(), 4);
        // Per client: refused at its own limit, without evicting anyone.
        assert_eq!(pool.admit(a, Some(2), 4, CancellationToken::new()).unwrap_err(), ClientFull);
        assert!(pool.admit(a, None, 10, CancellationToken::new()).is_ok());
    }

    #[test]
    fn of_equal_holders_the_oldest_goes() {
        let pool = PendingPool::default();
        let first = CancellationToken::new();
        let second = CancellationToken::new();
        pool.admit(key("192.0.2.1"), Some(1), 2, first.clone()).unwrap();
        pool.admit(key("192.0.2.2"), Some(1), 2, second.clone()).unwrap();
        pool.admit(key("192.0.2.3"), Some(1), 2, CancellationToken::new()).unwrap();
        assert!(first.is_cancelled() && !second.is_cancelled());
    }
}
