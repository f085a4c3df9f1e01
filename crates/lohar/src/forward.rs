//! The forward channel (port 1025): after FWD_REQ/FWD_RESP the connection is a
//! raw byte relay to `127.0.0.1:<port>` inside the guest.

use std::time::Duration;

use bhatti_protocol::messages::FwdRequest;
use bhatti_protocol::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;

use crate::fail::Fail;
use crate::wire::{Reader, Stream};

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials the requested guest port; the failure (code and words) goes into
/// FWD_RESP.
pub async fn dial(req: &Frame) -> Result<TcpStream, Fail> {
    let fr: FwdRequest = req
        .parse_json()
        .map_err(|e| Fail::invalid(format!("invalid forward request: {e}")))?;
    if fr.port == 0 {
        return Err(Fail::invalid("invalid port 0"));
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], fr.port));
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Fail::io(format_args!("dial 127.0.0.1:{}", fr.port), &e)),
        Err(_) => Err(Fail::from(format!("dial 127.0.0.1:{}: timed out", fr.port))),
    }
}

/// Relays bytes both ways. Each direction half-closes its destination when its
/// source ends; the relay ends when both directions have.
pub async fn relay(host_rd: Reader, mut host_wr: WriteHalf<Stream>, target: TcpStream) {
    let (mut t_rd, mut t_wr) = target.into_split();
    let up = async {
        // Bytes the host sent right behind FWD_REQ may already sit in our buffer.
        let buffered = host_rd.buffer().to_vec();
        if !buffered.is_empty() {
            t_wr.write_all(&buffered).await?;
        }
        let mut inner = host_rd.into_inner();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = inner.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            t_wr.write_all(&buf[..n]).await?;
        }
        t_wr.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut t_rd, &mut host_wr).await?;
        host_wr.shutdown().await
    };
    let (a, b) = tokio::join!(up, down);
    if let Err(e) = a.and(b) {
        tracing::debug!(error = %e, "forward relay ended with an error");
    }
}
