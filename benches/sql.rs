//! The `sql` source against `psql \copy`, dumping the same rows to a CSV file.
//!
//!   FERRY_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench sql
//!   FERRY_BENCH_ROWS=1000000 …                   (10 million rows by default)
//!
//! Fills a table of its own (id, a timestamp, a number, a short text) with
//! `generate_series`, then writes every row as CSV to a local file with `ferry trigger`
//! (sql source → local writer, fsynced) and with `psql -c "\copy (…) to stdout csv header"`
//! redirected to a file, three times each, alternating, under GNU time: wall time, CPU
//! seconds and peak RSS. ferry runs three ways: without parameters (COPY, as psql), with a
//! bound parameter (each value formatted by the server), and with `resume_key` (pages of
//! 10,000 rows by key). The files must match byte for byte. The table is dropped at the end.

#[expect(
    dead_code,
    reason = "the random input file is for the transfer benches"
)]
mod common;

use std::process::Command;

use common::measure;

fn main() {
    let Ok(url) = std::env::var("FERRY_BENCH_POSTGRES_URL") else {
        println!("not run: FERRY_BENCH_POSTGRES_URL is not set");
        return;
    };
    let rows: u64 = std::env::var("FERRY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let table = "ferry_bench_sql";
    let psql = |sql: &str| {
        let status = Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", &url, "-c", sql])
            .status()
            .expect("run psql");
        assert!(status.success(), "psql -c {sql}");
    };
    psql(&format!("DROP TABLE IF EXISTS {table}"));
    psql(&format!(
        "CREATE TABLE {table} AS SELECT n AS id, timestamptz '2026-01-01' + n * interval '1 second' AS at, \
         (n % 1000) / 7.0 AS amount, md5(n::text) AS label FROM generate_series(1, {rows}) n"
    ));
    psql(&format!("ALTER TABLE {table} ADD PRIMARY KEY (id)"));
    psql(&format!("VACUUM ANALYZE {table}"));

    let work = tempfile::tempdir().expect("temp dir");
    let query = format!("SELECT id, at, amount, label FROM {table}");
    let jobs = [
        ("ferry COPY", format!(r#"query = "{query} ORDER BY id""#)),
        (
            "ferry params",
            format!(r#"query = "{query} WHERE id > $1 ORDER BY id", params = ["job"]"#)
                .replace("$1", "length($1) - 10"),
        ),
        (
            "ferry keyset",
            format!(r#"query = "{query}", resume_key = "id""#),
        ),
    ];
    let mut config = String::from("[daemon]\nstate = \"sqlite://state.db\"\n");
    for (i, (_, keys)) in jobs.iter().enumerate() {
        config.push_str(&format!(
            "\n[[jobs]]\nname = \"dump{i}\"\nschedule = \"@yearly\"\nsource = {{ type = \"sql\", url = \"{url}\", {keys} }}\nwriters = [{{ type = \"local\", path = \"ferry{i}.csv\" }}]\n"
        ));
    }
    std::fs::write(work.path().join("jobs.toml"), config).expect("job file");
    let config_arg = work.path().join("jobs.toml").display().to_string();
    let copy = format!("\\copy ({query} ORDER BY id) to stdout csv header");
    let size_mib =
        |name: &str| std::fs::metadata(work.path().join(name)).map_or(0, |m| m.len() >> 20);
    println!("{rows} rows from {table}");
    for _ in 0..3 {
        measure(
            "psql \\copy",
            0,
            work.path(),
            Command::new("sh")
                .arg("-c")
                .arg("psql -q \"$1\" -c \"$2\" > psql.csv && sync psql.csv")
                .args(["sh", &url, &copy]),
        );
        for (i, (name, _)) in jobs.iter().enumerate() {
            measure(
                name,
                0,
                work.path(),
                Command::new(env!("CARGO_BIN_EXE_ferry"))
                    .args(["trigger", &format!("dump{i}"), "--config", &config_arg])
                    .env("FERRY_LOG", "warn"),
            );
        }
    }
    let expected = std::fs::read(work.path().join("psql.csv")).expect("psql's file");
    println!("psql.csv: {} MiB", size_mib("psql.csv"));
    for (i, (name, _)) in jobs.iter().enumerate() {
        let file = format!("ferry{i}.csv");
        let same = std::fs::read(work.path().join(&file)).is_ok_and(|got| got == expected);
        println!(
            "{name}: {file} {} MiB, same bytes as psql: {same}",
            size_mib(&file)
        );
    }
    psql(&format!("DROP TABLE {table}"));
}
