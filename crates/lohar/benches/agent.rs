//! Benchmarks of the protocol codec and of lohar in test mode, each figure beside
//! a baseline measured in the same run:
//! - exec round trip of `true` vs spawning `true` directly (fork/exec/wait),
//!   on a reused connection and on a connection of its own;
//! - reads and writes of 1 KiB, 1 MiB and 256 MiB (writes: 100 MiB, the
//!   protocol's cap) vs copying the same bytes over a Unix socket pair, and
//!   durable writes vs `dd conv=fsync` of the same size (reads on reused
//!   connections, as the daemon's client makes them);
//! - frame codec throughput vs a plain memcpy of the same bytes.
//!
//! Run: `cargo bench -p lohar --bench agent` → bench/results/agent.{json,md}.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::io::{Cursor, Read, Write};
use std::time::{Duration, Instant};

use bhatti_agent_client::{ExecRequest, ReadOptions};
use bhatti_benchkit::{p50, sample, Report};
use bhatti_protocol::{read_frame, write_frame, MsgType};
use common::Lohar;

const MIB: f64 = 1024.0 * 1024.0;

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

fn codec(report: &mut Report) {
    // 256 MiB through the codec in 64 KiB frames; the baseline copies the same
    // bytes once with memcpy.
    let payload = vec![0xabu8; 64 * 1024];
    let frames = 4096;
    let total = payload.len() * frames;
    let mut buf = vec![1u8; total + frames * 5];
    buf.clear();
    let t = Instant::now();
    for _ in 0..frames {
        write_frame(&mut buf, MsgType::Stdout as u8, &payload).unwrap();
    }
    let write = t.elapsed();
    let t = Instant::now();
    let mut r = Cursor::new(&buf);
    let mut n = 0;
    while let Some(f) = read_frame(&mut r).unwrap() {
        n += f.payload.len();
    }
    let read = t.elapsed();
    assert_eq!(n, total);
    // Touch every page first so the baseline measures copying, not page faults.
    let mut dst = vec![1u8; total];
    let t = Instant::now();
    for c in dst.chunks_mut(payload.len()) {
        c.copy_from_slice(black_box(&payload));
    }
    let memcpy = t.elapsed();
    black_box(&dst);
    let base = mib_per_s(total, memcpy);
    report.throughput(
        "frame write (64 KiB frames)",
        "MiB/s",
        mib_per_s(total, write),
        Some(("memcpy", base)),
        "",
    );
    report.throughput(
        "frame read (64 KiB frames)",
        "MiB/s",
        mib_per_s(total, read),
        Some(("memcpy", base)),
        "",
    );
    report.throughput(
        "frame write+read (64 KiB frames)",
        "MiB/s",
        mib_per_s(total, write + read),
        Some(("memcpy", base)),
        "target ≥ 1024 MiB/s",
    );
}

fn ring(report: &mut Report) {
    let mut ring = lohar::ring::Ring::new(64 * 1024);
    let chunk = vec![b'x'; 4096];
    let iters = 65_536; // 256 MiB
    let t = Instant::now();
    for _ in 0..iters {
        ring.write(black_box(&chunk));
    }
    let d = t.elapsed();
    black_box(ring.contents());
    report.throughput(
        "scrollback ring write (4 KiB chunks)",
        "MiB/s",
        mib_per_s(iters * chunk.len(), d),
        None,
        "",
    );
}

fn json(report: &mut Report) {
    let mut req = ExecRequest::new(["sh", "-c", "echo hello && ls -la /workspace"]);
    req.env.insert("FOO".into(), "bar".into());
    req.cwd = "/workspace".into();
    let batch = 1000;
    let samples = sample(200, || {
        for _ in 0..batch {
            black_box(serde_json::to_vec(black_box(&req)).unwrap());
        }
    });
    let per_op: Vec<Duration> = samples.iter().map(|d| *d / batch).collect();
    report.latency("ExecRequest JSON encode", &per_op, None, "per op");
}

fn spawn_true() {
    let st = std::process::Command::new("true").status().unwrap();
    assert!(st.success());
}

async fn agent(report: &mut Report) {
    let l = Lohar::start();
    let fresh = l.client();
    fresh.wait_ready(Duration::from_secs(10)).await.unwrap();
    // The daemon's kind of client: connections kept between operations.
    let c = l.client().reusing();
    // Warm up every path.
    for _ in 0..10 {
        c.exec(["true"]).await.unwrap();
        fresh.exec(["true"]).await.unwrap();
        spawn_true();
    }
    let n = 100;
    let mut reused = Vec::with_capacity(n);
    let mut own = Vec::with_capacity(n);
    let mut direct = Vec::with_capacity(n);
    // Interleave so all see the same machine conditions.
    for _ in 0..n {
        let t = Instant::now();
        let r = c.exec(["true"]).await.unwrap();
        reused.push(t.elapsed());
        assert_eq!(r.exit_code, 0);
        let t = Instant::now();
        let r = fresh.exec(["true"]).await.unwrap();
        own.push(t.elapsed());
        assert_eq!(r.exit_code, 0);
        let t = Instant::now();
        spawn_true();
        direct.push(t.elapsed());
    }
    report.latency(
        "exec `true` round trip via lohar, reused connection (unix socket)",
        &reused,
        Some(("direct fork/exec/wait of `true`", &direct)),
        "target p50 ≤ 1.2× baseline",
    );
    report.latency(
        "exec `true` round trip via lohar, a connection per exec (connect, AUTH)",
        &own,
        Some(("direct fork/exec/wait of `true`", &direct)),
        "",
    );

    // 50 cycles of 1 KiB write + read.
    let path = l.path("cycle.bin");
    let path = path.to_string_lossy().into_owned();
    let kib = vec![7u8; 1024];
    let mut cycles = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        c.file_write_bytes(&path, "0644", &kib).await.unwrap();
        let back = c
            .file_read_to_vec(&path, ReadOptions::default())
            .await
            .unwrap();
        cycles.push(t.elapsed());
        assert_eq!(back.len(), 1024);
    }
    report.latency("1 KiB write + read cycle", &cycles, None, "");

    transfers(&l, &c, report).await;

    // 10 concurrent execs, timed as a batch; baseline: 10 concurrent direct spawns.
    let mut batches = Vec::new();
    let mut direct_batches = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.exec(["true"]).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().exit_code, 0);
        }
        batches.push(t.elapsed());
        let t = Instant::now();
        let kids: Vec<_> = (0..10)
            .map(|_| std::process::Command::new("true").spawn().unwrap())
            .collect();
        for mut k in kids {
            k.wait().unwrap();
        }
        direct_batches.push(t.elapsed());
    }
    report.latency(
        "10 concurrent `true` execs (whole batch)",
        &batches,
        Some(("10 concurrent direct spawns", &direct_batches)),
        "",
    );
}

/// Times pushing `data` through a connected Unix socket pair and reading it
/// all on the other end, `reps` times: from the first write to the last
/// byte read, with the reader thread already waiting. The reader reuses one
/// 128 KiB buffer (a read returns at most what the socket holds, about
/// 200 KiB), so it pays for no page faults.
///
/// `land`: a directory where the reader writes what it reads into a fresh
/// file, timed to the file's close. What landing bytes from a socket in
/// tmpfs costs at least, the file's fresh pages included (which the bare
/// copy does not pay).
fn socketpair_copies(data: &[u8], reps: usize, land: Option<&std::path::Path>) -> Vec<Duration> {
    const BUF: usize = 128 * 1024;
    let mut times = Vec::new();
    for i in 0..reps {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let len = data.len();
        let path = land.map(|d| d.join(format!("baseline-{i}.bin")));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; BUF];
            let mut file = path.as_ref().map(|p| std::fs::File::create(p).unwrap());
            ready_tx.send(()).unwrap();
            let mut got = 0;
            while got < len {
                let n = b.read(&mut buf).unwrap();
                assert!(n > 0, "the socket pair closed early");
                if let Some(f) = file.as_mut() {
                    f.write_all(&buf[..n]).unwrap();
                }
                got += n;
            }
            drop(file);
            let done = Instant::now();
            if let Some(p) = &path {
                std::fs::remove_file(p).unwrap();
            }
            (got, done)
        });
        ready.recv().unwrap();
        let t = Instant::now();
        a.write_all(data).unwrap();
        let (got, done) = reader.join().unwrap();
        assert_eq!(got, len);
        times.push(done.duration_since(t));
    }
    times
}

/// Times `dd … conv=fsync` writing `size` bytes to `path`, `reps` times: the
/// floor of a durable write of that size from a fresh process.
fn dd_fsync(path: &std::path::Path, size: usize, reps: usize) -> Vec<Duration> {
    let (bs, count) = if size >= 1 << 20 {
        ("1M".to_string(), size >> 20)
    } else {
        (size.to_string(), 1)
    };
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            let st = std::process::Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", path.display()))
                .arg(format!("bs={bs}"))
                .arg(format!("count={count}"))
                .arg("conv=fsync")
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            t.elapsed()
        })
        .collect()
}

/// Reads and writes of 1 KiB, 1 MiB and a large size through the agent, each
/// beside a same-size baseline: a Unix socket pair copy (what moving the
/// bytes between two processes costs) and, for durable writes, `dd
/// conv=fsync`. Reads go to a sink, so the client's buffering is not
/// measured. Writes stop at 100 MiB, the protocol's cap on one file write.
async fn transfers(l: &Lohar, c: &bhatti_agent_client::AgentClient, report: &mut Report) {
    let shm = std::path::Path::new("/dev/shm");
    let tmpfs = shm
        .is_dir()
        .then(|| shm.join(format!("bhatti-bench-{}", std::process::id())));
    for (label, size, reps) in [
        ("1 KiB", 1usize << 10, 200usize),
        ("1 MiB", 1 << 20, 50),
        ("256 MiB", 256 << 20, 10),
    ] {
        let data = vec![0x5au8; size];
        let file = l.path(&format!("read-{size}.bin"));
        std::fs::write(&file, &data).unwrap();
        let p = file.to_string_lossy().into_owned();
        // Warm the page cache and the connection path.
        c.file_read(&p, ReadOptions::default(), &mut tokio::io::sink())
            .await
            .unwrap();
        let mut reads = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            let (_, n) = c
                .file_read(&p, ReadOptions::default(), &mut tokio::io::sink())
                .await
                .unwrap();
            reads.push(t.elapsed());
            assert_eq!(n, size as u64);
        }
        let base = socketpair_copies(&data, reps, None);
        let target = match size {
            s if s >= 256 << 20 => "target ≥ ×0.7 of the baseline's rate",
            s if s >= 1 << 20 => "target ≥ ×0.5 of the baseline's rate",
            _ => "",
        };
        report.latency(
            &format!("{label} file read"),
            &reads,
            Some(("unix socketpair copy", &base)),
            "",
        );
        report.throughput(
            &format!("{label} file read, p50 rate"),
            "MiB/s",
            mib_per_s(size, p50(&reads)),
            Some(("unix socketpair copy", mib_per_s(size, p50(&base)))),
            target,
        );
        let _ = std::fs::remove_file(&file);

        let wsize = size.min(100 << 20);
        let wlabel = if wsize == size { label } else { "100 MiB" };
        let data = &data[..wsize];
        if let Some(dir) = &tmpfs {
            std::fs::create_dir_all(dir).unwrap();
            // A fresh name each time, removed after the timing, as the
            // landing baseline does: replacing a file would also time the
            // freeing of the old one's pages.
            let mut w = Vec::with_capacity(reps);
            for i in 0..reps {
                let dst = dir.join(format!("w-{i}.bin"));
                let t = Instant::now();
                c.file_write_bytes(&dst.to_string_lossy(), "0644", data)
                    .await
                    .unwrap();
                w.push(t.elapsed());
                std::fs::remove_file(&dst).unwrap();
            }
            let base = socketpair_copies(data, reps, None);
            let landed = socketpair_copies(data, reps, Some(dir));
            report.latency(
                &format!("{wlabel} file write to tmpfs"),
                &w,
                Some(("unix socketpair copy", &base)),
                "",
            );
            report.throughput(
                &format!("{wlabel} file write to tmpfs, p50 rate"),
                "MiB/s",
                mib_per_s(wsize, p50(&w)),
                Some(("unix socketpair copy", mib_per_s(wsize, p50(&base)))),
                if wsize >= 100 << 20 {
                    "target ≥ ×0.7 of the baseline's rate"
                } else {
                    ""
                },
            );
            report.throughput(
                &format!(
                    "{wlabel} file write to tmpfs, p50 rate beside landing the bytes in tmpfs"
                ),
                "MiB/s",
                mib_per_s(wsize, p50(&w)),
                Some((
                    "unix socketpair read into a fresh tmpfs file",
                    mib_per_s(wsize, p50(&landed)),
                )),
                "",
            );
            let _ = std::fs::remove_dir_all(dir);
        }
        let dst = l.path(&format!("durable-{wsize}.bin"));
        let dst_s = dst.to_string_lossy().into_owned();
        let mut w = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            c.file_write_bytes(&dst_s, "0644", data).await.unwrap();
            w.push(t.elapsed());
        }
        let base = dd_fsync(&l.path("dd.bin"), wsize, reps);
        report.latency(
            &format!("{wlabel} durable file write (fsync, rename)"),
            &w,
            Some(("dd conv=fsync of the same size", &base)),
            "",
        );
        let _ = std::fs::remove_file(&dst);
        let _ = std::fs::remove_file(l.path("dd.bin"));
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    let mut report = Report::new("agent");
    codec(&mut report);
    ring(&mut report);
    json(&mut report);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(agent(&mut report));
    report.write().unwrap();
}
