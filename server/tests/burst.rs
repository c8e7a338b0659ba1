//! Overload and shutdown lose nothing: bursts of 600 and 2,000 concurrent `/embed` requests
//! (8 inputs each), repeated, each get an answer (200, or 503 when shed), never a connection
//! error; and a SIGTERM in the middle of a burst whose connections mostly wait in the kernel's
//! backlog answers every one of them.

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::Server;

/// Raises this process's open-files limit to the hard limit; returns the new soft limit.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max.min(1 << 20);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// One request on its own connection, started by every thread at once: the status, or the
/// connection error that lost it.
fn burst(addr: &str, clients: usize, body: &str) -> Vec<Result<u16, String>> {
    let body = Arc::new(body.to_string());
    let start = Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, body, start) = (addr.to_string(), body.clone(), start.clone());
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    start.wait();
                    request(&addr, &body, None)
                })
                .unwrap()
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// POST /embed on a new connection; `connected` counts the connections made.
fn request(addr: &str, body: &str, connected: Option<&AtomicUsize>) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    if let Some(c) = connected {
        c.fetch_add(1, Ordering::SeqCst);
    }
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "POST /embed HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok());
    status.ok_or_else(|| format!("no response ({} bytes)", raw.len()))
}

fn tally(results: &[Result<u16, String>]) -> (usize, usize, Vec<String>) {
    let ok = results.iter().filter(|r| matches!(r, Ok(200))).count();
    let shed = results.iter().filter(|r| matches!(r, Ok(429 | 503))).count();
    let lost: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Ok(200 | 429 | 503) => None,
            Ok(status) => Some(format!("status {status}")),
            Err(e) => Some(e.clone()),
        })
        .collect();
    (ok, shed, lost)
}

#[test]
fn bursts_of_600_and_2000_connections_are_all_answered() {
    let files = raise_open_files();
    let s = Server::start(&["--no-relevance", "--no-web"]);
    let body = json!({"inputs": vec!["red running shoes for trail and road"; 8]}).to_string();
    for clients in [600, 2000, 600, 2000] {
        // The client needs a descriptor per connection too.
        if files < clients as u64 + 64 {
            eprintln!("skipped the burst of {clients}: this process may open only {files} files (ulimit -n)");
            continue;
        }
        let started = Instant::now();
        let results = burst(&s.addr, clients, &body);
        let (ok, shed, lost) = tally(&results);
        eprintln!("burst of {clients}: {ok} answered 200, {shed} shed, {} lost in {:?}", lost.len(), started.elapsed());
        assert!(lost.is_empty(), "{} of {clients} requests lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
        assert!(ok > 0, "nothing was served");
        assert_eq!(s.get("/health").status, 200);
    }
}

#[test]
fn sigterm_during_a_burst_answers_every_accepted_connection() {
    raise_open_files();
    // Twenty connections at a time: the rest of the burst waits in the kernel's backlog, which
    // is what a listener that simply closed would reset.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tandem.toml");
    std::fs::write(&config, "[server]\nmax_connections = 20\ndrain_timeout_secs = 120\n").unwrap();
    let mut s = Server::start(&["--config", config.to_str().unwrap(), "--no-relevance", "--no-web"]);
    let long = "lightweight breathable mesh running shoes with cushioned sole ".repeat(2);
    let body = Arc::new(json!({"inputs": vec![long; 8]}).to_string());
    let clients = 300;
    let connected = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, body, connected) = (s.addr.clone(), body.clone(), connected.clone());
            std::thread::spawn(move || {
                let result = request(&addr, &body, Some(&connected));
                (result, Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) < clients && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(connected.load(Ordering::SeqCst), clients, "not every client connected");
    let term = Instant::now();
    let status = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let results: Vec<(Result<u16, String>, Instant)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let after = results.iter().filter(|(_, at)| *at > term).count();
    let results: Vec<Result<u16, String>> = results.into_iter().map(|(r, _)| r).collect();
    let (ok, shed, lost) = tally(&results);
    eprintln!("SIGTERM with {after} of {clients} still waiting: {ok} answered 200, {shed} shed, {} lost", lost.len());
    assert!(after > 20, "the burst was over before SIGTERM ({after} answered after it): the test proves nothing");
    assert!(
        lost.is_empty(),
        "{} of {clients} accepted connections lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", s.log());
}
