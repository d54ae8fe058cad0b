//! Test S3 servers on 127.0.0.1: `moto_server` (in-memory, honours conditional
//! writes; run with its requests serialized, see `MOTO_SERIALIZED`) and `s3s-fs`
//! (persists to a directory, checks signatures, conditional writes not atomic).
//!
//! The binaries come from `${GLIDEFS_TOOLS:-/opt/glidefs-tools}/bin`
//! (`scripts/install-test-servers.sh`); when missing, the test panics saying so.
//!
//! ```ignore
//! mod common;
//! use common::servers::TestServer;
//! let mut srv = TestServer::s3s_fs();          // started, bucket created
//! let store = srv.store("my/prefix");           // Arc<dyn ObjectStore>
//! srv.stop();                                   // outage (same port, data kept)
//! srv.restart();                                // back, same data dir + port
//! ```                                           // killed on drop

use glidefs::store::{open_store, ObjectStore, S3Store, StoreOptions};
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Access key the test servers accept.
pub const ACCESS_KEY: &str = "glidefstestkey";
/// Secret key the test servers accept.
pub const SECRET_KEY: &str = "glidefstestsecret0123456789";
/// Region of the test stores (not us-east-1: rust-s3 then sends a location
/// constraint that moto rejects).
pub const REGION: &str = "eu-west-1";
/// Bucket created on start.
pub const BUCKET: &str = "glidefs-test";

/// `moto_server` with every request under one lock (argument: port).
const MOTO_SERIALIZED: &str = r#"
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def serialized(environ, start_response):
    with lock:
        return list(app(environ, start_response))
run_simple("127.0.0.1", int(sys.argv[1]), serialized, threaded=True, request_handler=MotoRequestHandler)
"#;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `moto_server`: in-memory (restart loses data).
    Moto,
    /// `s3s-fs`: data in a directory that survives restarts.
    S3sFs,
}

/// A running (or stopped) test server; killed on drop.
pub struct TestServer {
    kind: ServerKind,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Where the tools live.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("GLIDEFS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/glidefs-tools"))
}

fn tool(name: &str) -> PathBuf {
    let p = tools_dir().join("bin").join(name);
    assert!(
        p.exists(),
        "{} not found: run scripts/install-test-servers.sh (installs moto_server and s3s-fs into $GLIDEFS_TOOLS, default /opt/glidefs-tools)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    /// Start `moto_server` with a fresh bucket.
    pub fn moto() -> Self {
        Self::start(ServerKind::Moto)
    }

    /// Start `s3s-fs` on a fresh data directory with a fresh bucket.
    pub fn s3s_fs() -> Self {
        Self::start(ServerKind::S3sFs)
    }

    /// Start a server of `kind` on a free port and create [`BUCKET`].
    pub fn start(kind: ServerKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut srv = Self {
            kind,
            port: free_port(),
            dir,
            child: None,
        };
        srv.spawn();
        srv.create_bucket();
        srv
    }

    /// Server kind.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The TCP port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Directory where s3s-fs keeps the objects (`<data>/<bucket>/<key>`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Options pointing at this server: short timeout and few, quick retries so
    /// outage tests fail fast.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            path_style: Some(true),
            access_key: Some(ACCESS_KEY.into()),
            secret_key: Some(SECRET_KEY.into()),
            timeout: Duration::from_secs(10),
            retries: 2,
            retry_base_delay: Duration::from_millis(20),
            retry_max_delay: Duration::from_millis(200),
            ..StoreOptions::default()
        }
    }

    /// `s3://BUCKET/prefix` (or `s3://BUCKET` for an empty prefix).
    pub fn url(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3://{BUCKET}")
        } else {
            format!("s3://{BUCKET}/{prefix}")
        }
    }

    /// A store on this server with keys under `prefix`, via `open_store`.
    pub fn store(&self, prefix: &str) -> Arc<dyn ObjectStore> {
        open_store(&self.url(prefix), &self.options()).unwrap()
    }

    /// A store on this server with keys under `prefix` and custom options (start
    /// from [`Self::options`], e.g. `StoreOptions { allow_racy_conditional: true,
    /// ..srv.options() }` to use s3s-fs's non-atomic conditional writes).
    pub fn store_with(&self, prefix: &str, opts: &StoreOptions) -> Arc<dyn ObjectStore> {
        open_store(&self.url(prefix), opts).unwrap()
    }

    /// The concrete `S3Store` (for `probe_conditional`).
    pub fn s3_store(&self, prefix: &str) -> S3Store {
        S3Store::open(BUCKET, prefix, &self.options()).unwrap()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kill the server (SIGKILL) and wait for it: an outage. Data of s3s-fs stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again on the same port and data directory. For moto
    /// (in-memory) the bucket is re-created, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if self.kind == ServerKind::Moto {
            self.create_bucket();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = match self.kind {
            ServerKind::Moto => {
                // moto_server's own entry point, but with one lock around the app:
                // moto checks If-None-Match/If-Match and then writes, which under its
                // threaded server is atomic only by GIL timing. Serialized, the race
                // tests exercise our client, not moto's thread scheduling.
                tool("moto_server");
                let mut c = Command::new(tools_dir().join("venv/bin/python"));
                c.args(["-c", MOTO_SERIALIZED, &self.port.to_string()]);
                c
            }
            ServerKind::S3sFs => {
                let mut c = Command::new(tool("s3s-fs"));
                c.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
                c.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
                c.arg(self.data_dir());
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.kind)),
        );
        self.wait_ready();
    }

    /// Poll until the port accepts connections (deadline 60 s: moto imports slowly
    /// on a busy machine).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if !self.is_running() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!(
                    "{:?} did not start on port {}; log:\n{log}",
                    self.kind, self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_bucket(&self) {
        let creds =
            s3::creds::Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
                .unwrap();
        let region = s3::Region::Custom {
            region: REGION.into(),
            endpoint: self.endpoint(),
        };
        let r = s3::Bucket::create_with_path_style(
            BUCKET,
            region,
            creds,
            s3::BucketConfiguration::default(),
        );
        if let Err(e) = r {
            panic!(
                "creating bucket on {:?}: {e}; log:\n{}",
                self.kind,
                self.log()
            );
        }
    }

    /// The server's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Path of the server's data directory root (s3s-fs) for corruption tests.
    pub fn object_path(&self, key: &str) -> PathBuf {
        Path::new(&self.data_dir()).join(BUCKET).join(key)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
