//! vsftpd for the benches: started on a free port of 127.0.0.1 with anonymous uploads.

use std::path::Path;
use std::process::Command;

/// Starts vsftpd on a free port with anonymous uploads into `work/vsftpd/up`; the port,
/// the process and the upload directory.
pub fn start_vsftpd(binary: &str, work: &Path) -> (u16, std::process::Child, std::path::PathBuf) {
    let root = work.join("vsftpd");
    let uploads = root.join("up");
    let empty = root.join("empty");
    std::fs::create_dir_all(&uploads).expect("upload dir");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let (port, passive) = (free(), free());
    let conf = root.join("vsftpd.conf");
    std::fs::write(
        &conf,
        format!(
            "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
             run_as_launching_user=YES\nanonymous_enable=YES\nno_anon_password=YES\n\
             anon_root={root}\nwrite_enable=YES\nanon_upload_enable=YES\n\
             anon_other_write_enable=YES\nanon_umask=022\nlocal_enable=NO\n\
             pasv_enable=YES\npasv_address=127.0.0.1\npasv_min_port={passive}\n\
             pasv_max_port={}\nsecure_chroot_dir={empty}\nseccomp_sandbox=NO\n\
             isolate=NO\nisolate_network=NO\nxferlog_enable=NO\n",
            passive.saturating_add(20),
            root = root.display(),
            empty = empty.display(),
        ),
    )
    .expect("vsftpd.conf");
    let child = Command::new(binary)
        .arg(&conf)
        .spawn()
        .expect("start vsftpd");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (port, child, uploads)
}

/// A port free on 127.0.0.1 just now.
pub fn free() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
