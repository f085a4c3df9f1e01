//! The frame codec over tokio streams. Same rules as [`crate::frame`].

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{check_len, encode_frame, Frame};
use crate::{MsgType, ProtocolError, Result, HEADER_LEN};

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Option<Frame>> {
    let mut payload = Vec::new();
    Ok(read_frame_into(r, &mut payload)
        .await?
        .map(|kind| Frame { kind, payload }))
}

/// Reads one frame's payload into `payload` (replacing what it held, and
/// reusing its allocation: a reader of many chunks keeps one buffer) and
/// returns the frame's type; `Ok(None)` on a clean end of stream.
pub async fn read_frame_into<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    payload: &mut Vec<u8>,
) -> Result<Option<u8>> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut n = 0;
    while n < HEADER_LEN {
        let k = r.read(&mut hdr[n..]).await?;
        if k == 0 {
            return if n == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::UnexpectedEof)
            };
        }
        // k ≤ HEADER_LEN - n (a tokio ReadBuf cannot be filled past its
        // capacity), so this cannot saturate.
        n = n.saturating_add(k);
    }
    let payload_len = check_len(u32::from_be_bytes(hdr) as usize)?;
    let mut kind = [0u8; 1];
    // Filled straight into spare capacity: a payload of up to 1 MiB is
    // never zeroed first only to be overwritten.
    payload.clear();
    payload.reserve(payload_len);
    let res = async {
        r.read_exact(&mut kind).await?;
        while payload.len() < payload_len {
            let left = payload_len.saturating_sub(payload.len()) as u64;
            if (&mut *r).take(left).read_buf(payload).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    match res {
        Ok(()) => Ok(Some(kind[0])),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProtocolError::UnexpectedEof)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes one frame as a single assembled buffer.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> Result<()> {
    let buf = encode_frame(kind, payload)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Writes a frame of a known type.
pub async fn send<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    kind: MsgType,
    payload: &[u8],
) -> Result<()> {
    write_frame(w, kind as u8, payload).await
}

/// Writes a frame whose payload is `v` as JSON.
pub async fn send_json<W: AsyncWrite + Unpin + ?Sized, T: serde::Serialize + ?Sized>(
    w: &mut W,
    kind: MsgType,
    v: &T,
) -> Result<()> {
    let payload = serde_json::to_vec(v)?;
    write_frame(w, kind as u8, &payload).await
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)] // test data of known, small sizes
mod tests {
    use super::*;
    use crate::messages::{ExecRequest, SessionInfo};
    use crate::MAX_FRAME_LEN;

    #[tokio::test]
    async fn async_round_trip_and_eof_kinds() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let req = ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        };
        send_json(&mut a, MsgType::ExecReq, &req).await.unwrap();
        send(&mut a, MsgType::Stdin, b"xyz").await.unwrap();
        drop(a);
        let f = read_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(f.parse_json::<ExecRequest>().unwrap().argv, vec!["true"]);
        let f = read_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(f.payload, b"xyz");
        assert!(read_frame(&mut b).await.unwrap().is_none());

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 2, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await.unwrap_err(),
            ProtocolError::UnexpectedEof
        ));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await.unwrap_err(),
            ProtocolError::UnexpectedEof
        ));
    }

    #[tokio::test]
    async fn async_rejects_oversize_without_writing() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let big = vec![0u8; MAX_FRAME_LEN];
        assert!(matches!(
            write_frame(&mut a, 2, &big).await.unwrap_err(),
            ProtocolError::FrameTooLarge(_)
        ));
        a.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await.unwrap_err(),
            ProtocolError::FrameTooLarge(_)
        ));
    }

    #[tokio::test]
    async fn json_frames_decode_on_the_other_side() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let si = SessionInfo {
            session_id: "s3".into(),
            running: true,
            ..Default::default()
        };
        send_json(&mut a, MsgType::SessionInfo, &si).await.unwrap();
        let f = read_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(f.parse_json::<SessionInfo>().unwrap(), si);
    }
}
