//! The public address's proxy.
//!
//! [`serve_committed`] (the primary's): client bytes go to the program at once;
//! the program's bytes are numbered by one cumulative sequence over all
//! connections ([`Outbox::produced`]) and each chunk is written to its client only
//! once [`Outbox::release`] reached its end. The primary's capture thread reads
//! the sequence just before each freeze, so every byte numbered at or below an
//! epoch's `output_seq` was produced before that freeze, and releasing up to it
//! when that epoch is acked never lets out a reply the backup's state lacks.
//! Each connection holds at most [`HELD_CHUNKS`] chunks of up to [`CHUNK`]
//! bytes; past that the proxy stops reading from the program (its socket buffer
//! then fills, and the program blocks as on a slow client).
//!
//! [`serve_plain`] (a promoted backup's, or an unprotected node's): bytes both
//! ways at once.

use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_net::{TcpListener, TcpStream};
use event_listener::Event;
use smol::io::{AsyncReadExt, AsyncWriteExt};

/// Largest chunk read from the program at once.
pub const CHUNK: usize = 64 << 10;
/// Chunks a connection holds before the proxy stops reading from the program.
pub const HELD_CHUNKS: usize = 64;

/// The output sequence and its release point, shared by the proxy and the
/// primary's loop.
#[derive(Debug, Default)]
pub struct Outbox {
    produced: AtomicU64,
    released: AtomicU64,
    changed: Event,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Bytes read from the program so far (all connections).
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::SeqCst)
    }

    /// Bytes the clients may have so far.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::SeqCst)
    }

    /// Lets bytes numbered up to `upto` through.
    pub fn release(&self, upto: u64) {
        self.released.fetch_max(upto, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    async fn wait_released(&self, seq: u64) {
        loop {
            if self.released() >= seq {
                return;
            }
            let l = self.changed.listen();
            if self.released() >= seq {
                return;
            }
            l.await;
        }
    }
}

/// Accepts clients on `listener` and proxies each to `app` with output commit;
/// every chunk read from the program is reported on `waiting` (its end sequence).
pub async fn serve_committed(
    listener: TcpListener,
    app: SocketAddr,
    outbox: Arc<Outbox>,
    waiting: smol::channel::Sender<u64>,
) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            smol::Timer::after(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let (outbox, waiting) = (outbox.clone(), waiting.clone());
        smol::spawn(async move {
            let app_conn = match TcpStream::connect(app).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, %app, "cannot reach the program: {e}; client dropped");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = app_conn.set_nodelay(true);
            smol::spawn(copy_then_shutdown(client.clone(), app_conn.clone())).detach();
            let (tx, rx) = smol::channel::bounded::<(u64, Vec<u8>)>(HELD_CHUNKS);
            let writer = smol::spawn(write_released(client, rx, outbox.clone()));
            let mut app_r = app_conn;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match app_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.truncate(n);
                let end = outbox.produced.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                let _ = waiting.try_send(end);
                if tx.send((end, buf)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            writer.await;
        })
        .detach();
    }
}

async fn write_released(
    mut client: TcpStream,
    rx: smol::channel::Receiver<(u64, Vec<u8>)>,
    outbox: Arc<Outbox>,
) {
    while let Ok((end, bytes)) = rx.recv().await {
        outbox.wait_released(end).await;
        if client.write_all(&bytes).await.is_err() {
            // The client is gone: drain the rest so the reader never blocks.
            while rx.recv().await.is_ok() {}
            return;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

async fn copy_then_shutdown(from: TcpStream, to: TcpStream) {
    let _ = smol::io::copy(from, to.clone()).await;
    let _ = to.shutdown(Shutdown::Write);
}

/// Accepts clients on `listener` and proxies each to `app`, both ways at once.
pub async fn serve_plain(listener: TcpListener, app: SocketAddr) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            smol::Timer::after(std::time::Duration::from_millis(10)).await;
            continue;
        };
        smol::spawn(async move {
            let app_conn = match TcpStream::connect(app).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, %app, "cannot reach the program: {e}; client dropped");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = app_conn.set_nodelay(true);
            let up = smol::spawn(copy_then_shutdown(client.clone(), app_conn.clone()));
            copy_then_shutdown(app_conn, client).await;
            up.await;
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo "program" behind the committed proxy: a reply reaches the client
    /// only once released up to its end, and the numbering counts every byte.
    #[test]
    fn output_is_held_until_released() {
        smol::block_on(async {
            let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let app_addr = app.local_addr().unwrap();
            smol::spawn(async move {
                while let Ok((s, _)) = app.accept().await {
                    smol::spawn(async move {
                        let _ = smol::io::copy(s.clone(), s).await;
                    })
                    .detach();
                }
            })
            .detach();
            let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let public_addr = public.local_addr().unwrap();
            let outbox = Arc::new(Outbox::new());
            let (tx, rx) = smol::channel::unbounded();
            smol::spawn(serve_committed(public, app_addr, outbox.clone(), tx)).detach();

            let mut c = TcpStream::connect(public_addr).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            // The program answered (the proxy read it) ...
            let seq = rx.recv().await.unwrap();
            assert_eq!(seq, 5);
            assert_eq!(outbox.produced(), 5);
            // ... but nothing reaches the client before the release.
            let mut buf = [0u8; 16];
            let early = smol::future::or(async { Some(c.read(&mut buf).await) }, async {
                smol::Timer::after(Duration::from_millis(200)).await;
                None
            })
            .await;
            assert!(early.is_none(), "output left before its release: {early:?}");
            outbox.release(4);
            let early = smol::future::or(async { Some(c.read(&mut buf).await) }, async {
                smol::Timer::after(Duration::from_millis(200)).await;
                None
            })
            .await;
            assert!(early.is_none(), "a chunk left before its end was released");
            outbox.release(5);
            let n = c.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hello");
        });
    }
}
