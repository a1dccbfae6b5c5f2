//! The real `ferry` binary as a child process, on ports the kernel picks:
//! Ferry binds `127.0.0.1:0` and logs the address it got, which is read back
//! from its stderr, so no test guesses a free port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A running `ferry serve`. Killed (and reaped) when dropped.
pub struct FerryProcess {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl FerryProcess {
    /// `ferry serve ARGS --listen 127.0.0.1:0` with `RUST_LOG=rust_log`; waits
    /// until it serves.
    pub fn start(args: &[&str], rust_log: &str) -> FerryProcess {
        let mut args: Vec<&str> = args.to_vec();
        if !args.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("serve")
            .args(&args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = serving_addr(&line) {
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("ferry did not start:\n{}", log.lock().unwrap());
            }
        };
        let mut ferry = FerryProcess { child, addr, log };
        // It binds before opening its store: wait until it says it is ready
        // (`ready after_ms=…`, or in JSON `"message":"ready"`).
        let ready =
            |log: &str| log.contains(" ready after_ms=") || log.contains("\"message\":\"ready\"");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ready(&ferry.log()) {
            if std::time::Instant::now() > deadline {
                ferry.kill();
                panic!("ferry never became ready:\n{}", ferry.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ferry
    }

    /// `http://ADDR`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a signal (`"HUP"`, `"TERM"`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits (at most `within`) for the log to contain `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in Ferry's start-up line (`ferry serving listen=ADDR …`, or
/// with `--log-format json`, `{"message":"ferry serving","listen":"ADDR",…}`).
fn serving_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("ferry serving") {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return v["listen"].as_str()?.parse().ok();
    }
    let rest = line.split("listen=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
