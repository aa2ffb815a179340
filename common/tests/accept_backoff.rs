//! At the descriptor limit the accept loop backs off instead of spinning, and serves again once
//! descriptors are free. Its own test binary: it lowers this process's RLIMIT_NOFILE.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// User + system CPU time of this process, in clock ticks, from an already open `/proc/self/stat`
/// (no descriptor is free to open it when it matters).
fn cpu_ticks(f: &mut std::fs::File) -> u64 {
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut stat = String::new();
    f.read_to_string(&mut stat).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_nofile(soft: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut r = getrlimit(Resource::Nofile);
    r.current = Some(soft);
    setrlimit(Resource::Nofile, r).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_backs_off_at_the_descriptor_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(coffer_common::server::serve(
        listener,
        None,
        app,
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    set_nofile(open_fds() + 40);
    let mut spare: Vec<std::fs::File> = (0..10)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let mut clients = Vec::new();
    while let Ok(c) = TcpStream::connect(addr).await {
        clients.push(c);
    }
    // Free one descriptor at a time until a client connection takes it: that connection then
    // waits in the backlog while the server has no descriptor to accept it with.
    let mut pending = false;
    while let Some(f) = spare.pop() {
        drop(f);
        if let Ok(c) = TcpStream::connect(addr).await {
            clients.push(c);
            pending = true;
            break;
        }
    }
    assert!(pending, "could not leave a connection pending at the limit");

    let before = cpu_ticks(&mut stat);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(&mut stat) - before;
    assert!(
        used < 20,
        "the accept loop spins at the descriptor limit: {used} ticks of CPU in 2 s"
    );

    // Descriptors freed: the server accepts and answers again.
    drop(clients);
    drop(spare);
    let mut answered = false;
    for _ in 0..50 {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        if matches!(r, Ok(Ok(_))) && out.starts_with(b"HTTP/1.1 200") {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "the server did not recover after descriptors were freed"
    );
}
