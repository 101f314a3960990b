//! A raw HTTP/1.1 upstream on loopback for tests that need an upstream to misbehave on
//! purpose (close without saying so, split a response, send bytes nobody asked for): the
//! test writes each response's bytes itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice::http1::chunked::{Chunked, Decoded};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// One request read off a raw socket: its head (lower-cased), method, path and body (by
/// `content-length`, or chunks).
pub struct Received {
    pub head: String,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads the next request from `socket` (`pending` keeps what came after it); `None` when
/// the connection ends first.
pub async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let mut words = head.split(' ');
            let method = words.next().unwrap_or_default().to_ascii_uppercase();
            let path = words.next().unwrap_or_default().to_string();
            if head.contains("\r\ntransfer-encoding: chunked") {
                pending.drain(..end + 4);
                let body = read_chunks(socket, pending).await?;
                let head = head + "\r\n";
                return Some(Received {
                    head,
                    method,
                    path,
                    body,
                });
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if pending.len() >= end + 4 + length {
                let body = pending[end + 4..end + 4 + length].to_vec();
                pending.drain(..end + 4 + length);
                return Some(Received {
                    head: head + "\r\n",
                    method,
                    path,
                    body,
                });
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads a chunked body off the front of `pending` (sluice's own decoder: sluice writes only
/// what it reads), leaving what follows it.
async fn read_chunks(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = bytes::BytesMut::from(&pending[..]);
    let mut decoder = Chunked::default();
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match decoder
            .decode(&mut buf)
            .expect("sluice sends well-formed chunks")
        {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => break,
            Decoded::More => match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
        }
    }
    *pending = buf.to_vec();
    Some(body)
}

/// Serves keep-alive connections with `answer` called for each request read (it writes the
/// response itself); counts the connections accepted.
pub async fn raw_upstream<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream, Received) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while let Some(request) = read_request(&mut socket, &mut pending).await {
                    match answer(socket, request).await {
                        Some(kept) => socket = kept,
                        None => return,
                    }
                }
            });
        }
    });
    (addr, accepted)
}
