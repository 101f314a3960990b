//! Without io_uring (not Linux), every request head is written on its own.

use tokio::net::TcpStream;

pub fn available() -> bool {
    false
}

pub fn send(_: &TcpStream, _: &[u8]) -> Option<std::future::Pending<std::io::Result<usize>>> {
    None
}
