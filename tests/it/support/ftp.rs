//! An FTP server on 127.0.0.1: libunftp with its file-system backend, one user, optional
//! explicit TLS; stopped and restarted on the same port to cut connections.

use super::Tls;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};

pub const USER: &str = "ferry";
pub const PASSWORD: &str = "ftp-test-password";

/// Accepts one user with one password.
#[derive(Debug)]
struct OneUser;

#[async_trait::async_trait]
impl Authenticator for OneUser {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username != USER {
            return Err(AuthenticationError::BadUser);
        }
        if creds.password.as_deref() != Some(PASSWORD) {
            return Err(AuthenticationError::BadPassword);
        }
        Ok(Principal {
            username: username.to_owned(),
        })
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An FTP server on 127.0.0.1 serving a directory, on its own runtime so that stopping it
/// cuts every connection at once, as a crash or a network failure would.
pub struct FtpServer {
    runtime: Option<tokio::runtime::Runtime>,
}

impl FtpServer {
    /// Serves `root` on `port`; waits until it accepts connections.
    pub async fn start(root: &Path, port: u16, tls: Option<&Tls>) -> FtpServer {
        FtpServer::start_advertising(root, port, tls, None).await
    }

    /// Like [`FtpServer::start`], its PASV replies naming `passive_host` when given.
    pub async fn start_advertising(
        root: &Path,
        port: u16,
        tls: Option<&Tls>,
        passive_host: Option<std::net::Ipv4Addr>,
    ) -> FtpServer {
        let root = root.to_path_buf();
        let passive = free_port();
        let mut builder = libunftp::ServerBuilder::with_authenticator(
            Box::new(move || {
                unftp_sbe_fs::Filesystem::new(root.clone()).expect("file system backend")
            }),
            Arc::new(OneUser),
        )
        .passive_ports(passive..=passive.saturating_add(20));
        if let Some(host) = passive_host {
            builder = builder.passive_host(libunftp::options::PassiveHost::Ip(host));
        }
        if let Some(tls) = tls {
            builder = builder
                .ftps(tls.cert.clone(), tls.key.clone())
                .ftps_required(
                    libunftp::options::FtpsRequired::All,
                    libunftp::options::FtpsRequired::All,
                );
        }
        let server = builder.build().expect("FTP server");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.spawn(server.listen(format!("127.0.0.1:{port}")));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return FtpServer {
                    runtime: Some(runtime),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the FTP server did not start on port {port}");
    }

    /// Stops the server, cutting its connections mid-transfer.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `root` over plain FTP on a free port; returns the port and the server.
pub async fn serve(root: &Path) -> (u16, FtpServer) {
    let port = free_port();
    (port, FtpServer::start(root, port, None).await)
}
