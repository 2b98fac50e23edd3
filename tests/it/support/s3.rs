//! An S3 server on 127.0.0.1: s3s with its file-system backend, one key pair.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

pub const ACCESS_KEY: &str = "AKIAFERRYTESTKEY";
pub const SECRET_KEY: &str = "ferry-test-secret-key-0123456789";
pub const BUCKET: &str = "deliveries";

/// An S3 server (s3s + s3s-fs) on 127.0.0.1, storing objects under a directory.
pub struct S3Server {
    pub addr: SocketAddr,
    /// UploadPart requests seen, by part number.
    pub parts: Arc<Mutex<BTreeMap<u32, usize>>>,
    connections: JoinSet<()>,
}

impl S3Server {
    /// Serves `root` (a bucket is a directory in it) on `addr` (port 0: any free port).
    pub async fn start(
        root: &Path,
        addr: SocketAddr,
        parts: Arc<Mutex<BTreeMap<u32, usize>>>,
    ) -> S3Server {
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs over the directory");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the S3 port");
        let addr = listener.local_addr().expect("address");
        let mut connections = JoinSet::new();
        let counter = Arc::clone(&parts);
        connections.spawn(async move {
            let mut tasks = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    break;
                };
                let service = service.clone();
                let counter = Arc::clone(&counter);
                tasks.spawn(async move {
                    let counting = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            if req.method() == hyper::Method::PUT
                                && let Some(number) = part_number(req.uri().query().unwrap_or(""))
                            {
                                *counter.lock().expect("lock").entry(number).or_default() += 1;
                            }
                            let service = service.clone();
                            async move { hyper::service::Service::call(&service, req).await }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), counting)
                        .await;
                });
            }
        });
        S3Server {
            addr,
            parts,
            connections,
        }
    }

    /// Stops accepting and cuts every open connection.
    pub fn stop(mut self) {
        self.connections.abort_all();
    }
}

fn part_number(query: &str) -> Option<u32> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("partNumber="))
        .and_then(|n| n.parse().ok())
}

/// A fresh server with the test bucket, and its storage directory.
pub async fn server() -> (S3Server, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
    let server = S3Server::start(
        root.path(),
        "127.0.0.1:0".parse().expect("addr"),
        Arc::default(),
    )
    .await;
    (server, root)
}

/// A client of the test server, for reading back what ferry wrote.
pub fn client(addr: SocketAddr) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// The `[[jobs]]` table of an S3 delivery; `extra` goes into the writer table.
pub fn s3_job(name: &str, source: &str, addr: SocketAddr, key: &str, extra: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "{name}"
schedule = "@daily"
source = {source}
retry = {{ max_attempts = 3, initial_interval = "1s" }}
writers = [{{ type = "s3", bucket = "{BUCKET}", key = "{key}", endpoint = "http://{addr}", path_style = true, region = "us-east-1", access_key_id = "{ACCESS_KEY}", secret_access_key_file = "secrets/s3"{extra} }}]
"#
    )
}
