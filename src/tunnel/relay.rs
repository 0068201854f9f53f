//! Relaying between a TCP socket and a tunnel stream, both ways, on either
//! end: the gateway's client socket, or the agent's socket to its target.
//!
//! h2 gives each stream its own window: a direction takes capacity before it
//! sends and gives it back once the bytes are written on, so a reader that
//! stalls stops its own stream and no other. The end of a direction is
//! END_STREAM one way and a TCP shutdown the other way (half-close); a
//! failure is RST_STREAM one way and the socket's close the other way.

use crate::relay::{Counters, RelayEnd};
use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use std::future::poll_fn;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The most read from the socket at once.
const CHUNK: usize = 64 * 1024;

/// A stream of a session, as either end holds it.
pub struct Stream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
}

/// Relays until both directions have ended, one fails, or nothing moved
/// for `idle`. `counters.up` counts socket → stream bytes. `one_request`:
/// as `crate::relay::relay_answer`, what the socket sends is read and
/// dropped (only its end is passed on) and the relay ends with the answer.
pub async fn relay<S>(
    socket: &mut S,
    stream: Stream,
    idle: Duration,
    counters: &Counters,
    one_request: bool,
) -> Result<(), RelayEnd>
where
    S: AsyncRead + AsyncWrite + Unpin + AsFd,
{
    let Stream { mut send, mut recv } = stream;
    // Set when the stream's side failed (the peer reset it): the socket is
    // then closed with a reset too, so that a truncated transfer never looks
    // complete (as `crate::relay` does between two sockets).
    let aborted = AtomicBool::new(false);
    let started = Instant::now();
    // Milliseconds since `started` of the last byte either way.
    let last = AtomicU64::new(0);
    let touch = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut reader, mut writer) = tokio::io::split(socket);
    let up = async {
        let result = socket_to_stream(&mut reader, &mut send, &counters.up, touch, one_request).await;
        if result.is_err() {
            send.send_reset(h2::Reason::CANCEL);
        }
        result
    };
    // A failed direction ends both: dropping the stream's halves resets it
    // (RST_STREAM), and the caller's dropping the socket closes that side.
    let down = async {
        let result = stream_to_socket(&mut recv, &mut writer, &counters.down, touch).await;
        aborted.store(result.is_err(), Ordering::Relaxed);
        result
    };
    let idle_watch = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = started + since + idle;
            if Instant::now() >= deadline {
                return RelayEnd::Idle(idle);
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let both = async {
        if !one_request {
            return tokio::try_join!(up, down).map(|_| ());
        }
        let mut down = std::pin::pin!(down);
        tokio::select! {
            answered = &mut down => return answered,
            sent = up => sent?,
        }
        down.await
    };
    let result = tokio::select! {
        result = both => result.map_err(RelayEnd::Io),
        end = idle_watch => Err(end),
    };
    let socket = reader.unsplit(writer);
    if aborted.load(Ordering::Relaxed) {
        // With a zero linger, closing the socket sends RST, not FIN.
        let _ = socket2::SockRef::from(&*socket).set_linger(Some(Duration::ZERO));
    }
    result
}

async fn socket_to_stream<R: AsyncRead + Unpin>(
    reader: &mut R,
    send: &mut SendStream<Bytes>,
    count: &AtomicU64,
    touch: impl Fn(),
    discard: bool,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(CHUNK);
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            return send.send_data(Bytes::new(), true).map_err(io::Error::other);
        }
        touch();
        if discard {
            buf.clear();
            continue;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted.map_err(io::Error::other)?,
                None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel stream closed")),
            };
            if granted == 0 {
                continue;
            }
            send.send_data(data.split_to(granted.min(data.len())), false).map_err(io::Error::other)?;
        }
    }
}

async fn stream_to_socket<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    writer: &mut W,
    count: &AtomicU64,
    touch: impl Fn(),
) -> io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))?;
        touch();
        writer.write_all(&data).await?;
        count.fetch_add(data.len() as u64, Ordering::Relaxed);
        // Only now may the peer send more on this stream.
        let _ = recv.flow_control().release_capacity(data.len());
    }
    writer.shutdown().await
}
