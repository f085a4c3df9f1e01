//! Protocol constants shared by host and guest.

/// Largest allowed value of the length prefix (type byte + payload), 1 MiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest payload a single frame can carry.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 1;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Control port: exec, sessions, files, activity.
pub const PORT_CONTROL: u32 = 1024;
/// Forward port: raw TCP tunnels into the guest.
pub const PORT_FORWARD: u32 = 1025;

/// Protocol version announced in HELLO (v1 agents do not know HELLO at all).
pub const PROTOCOL_VERSION: u32 = 2;

/// Scrollback kept per session.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;
/// Concurrent control connections an agent accepts.
pub const MAX_CONTROL_CONNS: usize = 50;
/// Entries (running or exited-but-unreaped) in an agent's session registry.
pub const MAX_SESSIONS: usize = 20;
/// Entries returned by a directory listing before the sentinel.
pub const MAX_LS_ENTRIES: usize = 10_000;
/// Largest file a FILE_WRITE may carry.
pub const MAX_FILE_WRITE: i64 = 100 * 1024 * 1024;
/// Chunk size for file content frames in either direction. The reference uses
/// 32 KiB; any size up to the frame cap is valid on the wire, and larger chunks
/// halve the per-frame overhead of big transfers.
pub const FILE_CHUNK: usize = 128 * 1024;
/// Chunk size for whole-file content that the agent moves without a buffer
/// of its own: a read it sends with sendfile(2), a write it lands with
/// splice(2). Fewer, larger frames halve the per-frame work again; the
/// cost is the host's one receive (or send) buffer of this size per
/// transfer. Any size up to the frame cap is valid on the wire, so agents
/// that still copy accept it too.
pub const FILE_STREAM_CHUNK: usize = 512 * 1024;
/// Longest line a truncated (line-based) read keeps in one piece.
pub const MAX_LINE_LEN: usize = 256 * 1024;
/// Cap on buffered exec output collected by the host client.
pub const MAX_EXEC_OUTPUT: usize = 10 * 1024 * 1024;
/// Marker appended to stderr when buffered exec output was cut.
pub const TRUNCATION_MARKER: &str = "\n[output truncated at 10MB]";
/// Session id of the config-drive `init` script.
pub const INIT_SESSION_ID: &str = "init";
