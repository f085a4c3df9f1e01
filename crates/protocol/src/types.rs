//! Message type numbers (the byte after the length prefix).

/// Every frame type the protocol defines. Unknown numbers are carried as raw `u8`
/// in [`crate::Frame`] so that newer peers can add types without breaking older ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// host→guest: child stdin bytes; also file-write content.
    Stdin = 0x01,
    /// guest→host: stdout bytes; also file-read content, scrollback, detached metadata.
    Stdout = 0x02,
    /// guest→host: stderr bytes (piped exec).
    Stderr = 0x03,
    /// host→guest: `u16 rows, u16 cols`, big-endian.
    Resize = 0x04,
    /// guest→host: `i32` exit code, big-endian.
    Exit = 0x05,
    /// either direction: UTF-8 message.
    Error = 0x06,
    /// host→guest: kill the running operation.
    Kill = 0x07,
    /// host→guest: JSON `ExecRequest`.
    ExecReq = 0x10,
    /// host→guest: raw token; first frame when the agent has a token.
    Auth = 0x11,
    /// guest→host (v2 reference only): empty.
    ConfigReq = 0x12,
    /// host→guest (v2 reference only): JSON config.
    ConfigResp = 0x13,
    /// host→guest: JSON `{"port"}` on the forward port.
    FwdReq = 0x20,
    /// guest→host: JSON status; after `ok` the connection is a raw relay.
    FwdResp = 0x21,
    /// host→guest: empty.
    ExecListReq = 0x30,
    /// guest→host: JSON `[SessionInfo]`.
    ExecListResp = 0x31,
    /// host→guest: JSON `{"session_id"}`.
    ExecKill = 0x32,
    /// guest→host: JSON `SessionInfo` (on create and attach).
    SessionInfo = 0x33,
    /// host→guest: empty.
    ActivityReq = 0x40,
    /// guest→host: JSON `ActivityInfo`.
    ActivityResp = 0x41,
    /// host→guest: JSON `FileReadRequest`.
    FileReadReq = 0x50,
    /// guest→host: JSON `{"size","mode"}`.
    FileReadResp = 0x51,
    /// host→guest: JSON `FileWriteRequest`, followed by STDIN frames.
    FileWriteReq = 0x52,
    /// guest→host: JSON `{"status":"ok"}`.
    FileWriteResp = 0x53,
    /// host→guest: JSON `{"path"}`.
    FileStatReq = 0x54,
    /// guest→host: JSON `FileInfo`.
    FileStatResp = 0x55,
    /// host→guest: JSON `{"path"}`.
    FileLsReq = 0x56,
    /// guest→host: JSON `[FileInfo]`.
    FileLsResp = 0x57,
    /// host→guest (this implementation): JSON `WatchRequest`; the connection
    /// then carries the watch until the host closes it.
    WatchReq = 0x58,
    /// guest→host (this implementation): JSON `{"status":"ok"}` once the
    /// watch is in place (every later change is reported).
    WatchResp = 0x59,
    /// guest→host (this implementation): JSON `WatchEvent`.
    WatchEvent = 0x5a,
    /// in-guest systemctl IPC request.
    SystemctlReq = 0x60,
    /// in-guest systemctl IPC response.
    SystemctlResp = 0x61,
    /// host→guest (this implementation): JSON `Hello`, the one request of its connection.
    Hello = 0x70,
    /// guest→host (this implementation): JSON `HelloResponse`.
    HelloResp = 0x71,
    /// host→guest (this implementation, HELLO feature `config.apply`):
    /// JSON `ApplyConfig`, the per-sandbox configuration for a guest that
    /// booted without it.
    ApplyConfigReq = 0x72,
    /// guest→host (this implementation): JSON `ApplyConfigResult`.
    ApplyConfigResp = 0x73,
}

impl MsgType {
    /// Maps a type byte to a known message type.
    pub fn from_u8(b: u8) -> Option<MsgType> {
        use MsgType::*;
        Some(match b {
            0x01 => Stdin,
            0x02 => Stdout,
            0x03 => Stderr,
            0x04 => Resize,
            0x05 => Exit,
            0x06 => Error,
            0x07 => Kill,
            0x10 => ExecReq,
            0x11 => Auth,
            0x12 => ConfigReq,
            0x13 => ConfigResp,
            0x20 => FwdReq,
            0x21 => FwdResp,
            0x30 => ExecListReq,
            0x31 => ExecListResp,
            0x32 => ExecKill,
            0x33 => SessionInfo,
            0x40 => ActivityReq,
            0x41 => ActivityResp,
            0x50 => FileReadReq,
            0x51 => FileReadResp,
            0x52 => FileWriteReq,
            0x53 => FileWriteResp,
            0x54 => FileStatReq,
            0x55 => FileStatResp,
            0x56 => FileLsReq,
            0x57 => FileLsResp,
            0x58 => WatchReq,
            0x59 => WatchResp,
            0x5a => WatchEvent,
            0x60 => SystemctlReq,
            0x61 => SystemctlResp,
            0x70 => Hello,
            0x71 => HelloResp,
            0x72 => ApplyConfigReq,
            0x73 => ApplyConfigResp,
            _ => return None,
        })
    }
}

impl From<MsgType> for u8 {
    fn from(t: MsgType) -> u8 {
        t as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_byte() {
        for b in 0..=u8::MAX {
            if let Some(t) = MsgType::from_u8(b) {
                assert_eq!(u8::from(t), b);
            }
        }
        assert_eq!(MsgType::from_u8(0x7f), None);
        assert_eq!(MsgType::from_u8(0x00), None);
    }
}
