#!/usr/bin/env bash
# Throughput and peak memory of `ferry trigger` on large local deliveries.
#
#   bash benches/throughput.sh [SIZE_MIB]      (default 1024)
#
# Builds ferry in release mode, makes a random input file of SIZE_MIB MiB in a temporary
# directory, and runs one delivery per scenario under GNU time, printing wall time, MiB/s
# and peak RSS. `cp` of the same file is a baseline, and `dd conv=fsync` (durable, as
# ferry's writes are) the peer of the local writer, alternating with it. The page cache is
# not dropped (that needs root and says nothing about ferry); every scenario reads a warm
# file.
set -euo pipefail

size_mib=${1:-1024}
repo=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
ferry="$repo/target/release/ferry"
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/input.bin"

cat > "$work/jobs.toml" <<TOML
[[jobs]]
name = "file-to-local"
schedule = "@daily"
source = { type = "file", path = "input.bin" }
writers = [{ type = "local", path = "out/copy.bin" }]

[[jobs]]
name = "file-to-two"
schedule = "@daily"
source = { type = "file", path = "input.bin" }
writers = [
  { type = "local", path = "out/a.bin" },
  { type = "local", path = "out/b.bin" },
]

[[jobs]]
name = "command-to-local"
schedule = "@daily"
source = { type = "command", command = ["cat", "input.bin"] }
writers = [{ type = "local", path = "out/piped.bin" }]

[[jobs]]
name = "file-zstd-local"
schedule = "@daily"
source = { type = "file", path = "input.bin" }
transform = "zstd"
writers = [{ type = "local", path = "out/copy.bin.zst" }]
TOML

# measure NAME COMMAND...: runs COMMAND under GNU time and prints one row.
measure() {
  local name=$1; shift
  rm -rf "$work/out"; mkdir -p "$work/out"
  FERRY_LOG=warn /usr/bin/time -f '%e %M' -o "$work/time" "$@" > /dev/null
  read -r secs rss_kib < "$work/time"
  awk -v n="$name" -v s="$secs" -v r="$rss_kib" -v m="$size_mib" \
    'BEGIN { printf "%-18s %8.2f s %10.1f MiB/s %9.1f MiB peak RSS\n", n, s, (s > 0 ? m / s : 0), r / 1024 }'
}

echo "ferry $("$ferry" --version | cut -d' ' -f2), ${size_mib} MiB input, $(nproc) cores, $work"
measure "cp (baseline)" cp "$work/input.bin" "$work/out/cp.bin"
# ferry's local writer fsyncs before the rename: dd conv=fsync is the like-for-like peer.
# Three rounds, alternating, each after a sync so neither waits for the other's writeback.
for _ in 1 2 3; do
  sync
  measure "dd conv=fsync" dd if="$work/input.bin" of="$work/out/dd.bin" bs=1M conv=fsync status=none
  sync
  measure "file-to-local" "$ferry" trigger file-to-local --config "$work/jobs.toml"
done
for job in file-to-two command-to-local file-zstd-local; do
  measure "$job" "$ferry" trigger "$job" --config "$work/jobs.toml"
done
