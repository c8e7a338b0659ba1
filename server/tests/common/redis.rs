//! A real `redis-server` (Debian's package) on a free loopback port, for the tests of the
//! shared QE cache, with a few lines of RESP to drive it. `None` (the caller skips, saying
//! why) when redis-server is not installed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server with `password` (if any) on a free port.
    pub fn start(password: Option<&str>) -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { child: None, port, dir: tempfile::tempdir().unwrap() };
        redis.restart(password);
        Some(redis)
    }

    /// Starts it again on the same port (after [`Redis::kill`]), possibly with another password.
    pub fn restart(&mut self, password: Option<&str>) {
        self.kill();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"]);
        command.args(["--enable-debug-command", "local", "--dir"]).arg(self.dir.path());
        if let Some(p) = password {
            command.args(["--requirepass", p]);
        }
        self.child =
            Some(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("cannot start redis-server"));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, password: Option<&str>) -> String {
        match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Sends one command and returns the first line of the reply (`+OK`, `:3`, `$5`, `-ERR ...`).
    pub fn command(&self, password: Option<&str>, args: &[&str]) -> String {
        Self::command_on(self.port, password, args)
    }

    /// [`Redis::command`] without the handle, for another thread.
    pub fn command_on(port: u16, password: Option<&str>, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if let Some(p) = password {
            stream.write_all(&resp(&["AUTH", p])).unwrap();
            reader.read_line(&mut line).unwrap();
            line.clear();
        }
        stream.write_all(&resp(args)).unwrap();
        reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out += &format!("${}\r\n{a}\r\n", a.len());
    }
    out.into_bytes()
}
