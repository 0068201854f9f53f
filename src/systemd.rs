//! systemd integration: readiness, reload and stop notifications
//! (Type=notify), and listening sockets passed by a socket unit (socket
//! activation), so that a restart for a new binary queues new connections in
//! the kernel instead of refusing them. Both are no-ops outside systemd.
//! The protocols are spoken by the sd-notify crate: small, pure Rust, no
//! libsystemd.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};

pub fn ready(status: &str) {
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
}

/// systemd 253 and later require the monotonic time with RELOADING=1.
pub fn reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(error) => tracing::warn!(%error, "cannot read the monotonic clock for systemd"),
    }
}

/// A line `systemctl status` shows, without changing the state.
pub fn status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Listening TCP sockets passed by systemd (LISTEN_FDS, for this process
/// only), by the address they are bound to.
pub fn inherited_listeners() -> io::Result<HashMap<SocketAddr, TcpListener>> {
    let mut listeners = HashMap::new();
    for fd in sd_notify::listen_fds()? {
        let listener = adopt(fd)?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        listeners.insert(address, listener);
    }
    Ok(listeners)
}

fn adopt(fd: RawFd) -> io::Result<TcpListener> {
    // Only a listening stream socket is accepted, so the fd cannot be
    // mistaken for something else once owned.
    // SAFETY: the descriptor is open (systemd passed it) for this borrow.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    if socket.r#type()? != socket2::Type::STREAM || !socket.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} from systemd is not a listening TCP socket"),
        ));
    }
    // SAFETY: systemd passed this descriptor to this process alone
    // (LISTEN_PID is checked by sd-notify) and nothing else owns it.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}
