//! ferry's integration tests: one binary, shared helpers in `support`.

mod architecture;
mod cli;
mod cluster;
mod config_errors;
mod daemon;
mod dst;
mod fanout;
mod ftp;
mod http_writer;
mod local_writer;
mod monitoring;
mod notify;
mod process;
mod readiness;
mod registry;
mod resume;
mod retry;
mod s3;
mod scenario;
mod schedule;
mod security;
mod sftp;
mod sources;
mod sql_source;
mod store;
mod support;
