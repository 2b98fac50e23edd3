#!/usr/bin/env python3
"""Chaos run for several daemons on one PostgreSQL (issue 18).

Starts N `ferry run` daemons on one job file and one fresh PostgreSQL database: many small
jobs firing every second, plus big deliveries every minute (a local file, and S3 / FTP when
their servers are given), each throttled so that it lasts long enough to be interrupted.
Every KILL_EVERY seconds one random daemon gets SIGKILL and is started again RESTART_AFTER
seconds later. Optionally one daemon is stopped with SIGSTOP past its lease and continued,
and PostgreSQL is restarted mid-run, or stopped for a while (an outage: the slots that fall
due meanwhile cannot be claimed, and with `--misfire-grace` are made up once it is back). Afterwards it reads the daemons' JSON logs, the store
and what a webhook receiver got, and prints:

  * duplicate starts: (job, slot) pairs with more than one "Run started." line;
  * missed slots: seconds of the small jobs without a run (outside a PostgreSQL outage, whose
    seconds are counted apart, with the catch-up runs the daemons logged);
  * big deliveries: outcome, attempts, resumed_from, sha256 against the source's;
  * notifications: webhook calls per run (must be exactly 1) and outbox rows not sent;
  * take-overs and runs given up by fencing.

Usage (release binary; PostgreSQL on 127.0.0.1:5432 with trust auth, as on CI):

    cargo build --release
    python3 benches/chaos.py --duration 600            # the issue's 10 minutes
    python3 benches/chaos.py --duration 120 --jobs 50  # a quick look

Optional servers, as the Rust benches take them:
    FERRY_BENCH_S3_SERVER=~/.cargo/bin/s3s-fs   (cargo install s3s-fs --version 0.14.1 --features binary --locked)
    FERRY_BENCH_VSFTPD=/opt/vsftpd/usr/sbin/vsftpd (apt-get download vsftpd; dpkg -x vsftpd_*.deb /opt/vsftpd)

Exit status 0 when every check holds, 1 otherwise.
"""

import argparse
import collections
import datetime
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PG = "postgres://postgres@127.0.0.1:5432"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(db, sql):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-AtF", "\t", "-c", sql],
        check=True, capture_output=True, text=True,
    )
    return [line.split("\t") for line in out.stdout.splitlines() if line]


class Hooks(http.server.BaseHTTPRequestHandler):
    """Keeps every webhook call's JSON body."""
    calls = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with Hooks.lock:
            Hooks.calls.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def start_s3(binary, root):
    port = free_port()
    os.makedirs(os.path.join(root, "bucket"), exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", "AKIA", "--secret-key", "SECRET", root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def start_vsftpd(binary, work):
    """vsftpd as benches/common/vsftpd.rs runs it: anonymous uploads into root/up (no chroot
    as the launching user: paths are the machine's)."""
    root = os.path.join(work, "vsftpd")
    empty = os.path.join(root, "empty")
    os.makedirs(os.path.join(root, "up"))
    os.makedirs(empty)
    os.chmod(os.path.join(root, "up"), 0o777)
    port, passive = free_port(), free_port()
    conf = os.path.join(root, "vsftpd.conf")
    with open(conf, "w") as f:
        f.write(f"""listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
run_as_launching_user=YES
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
write_enable=YES
anon_upload_enable=YES
anon_other_write_enable=YES
anon_umask=022
local_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port={passive}
pasv_max_port={passive + 200}
secure_chroot_dir={empty}
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
xferlog_enable=NO
max_clients=0
max_per_ip=0
""")
    proc = subprocess.Popen([binary, conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, os.path.join(root, "up")


def wait_port(port, limit=20):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def job_file(work, db, args, hook_port, s3_port, ftp_port, ftp_dir):
    out = os.path.join(work, "out")
    big = os.path.join(work, "big.bin")
    lines = [f"""[daemon]
state = "{PG}/{db}"
lease = "{args.lease}"
shutdown_timeout = "5s"

[notifiers.hook]
type = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
"""]
    grace = f'misfire_grace = "{args.misfire_grace}"\n' if args.misfire_grace else ""
    for i in range(args.jobs):
        lines.append(f"""[[jobs]]
name = "small-{i:04}"
schedule = "* * * * * *"
{grace}source = {{ type = "inline", data = "x" }}
writers = [{{ type = "local", path = "{out}/small/{{job}}" }}]
""")
    bigs = [("big-local", f'{{ type = "local", path = "{out}/big/{{scheduled:%H%M}}.bin" }}')]
    if s3_port:
        bigs.append(("big-s3", f'{{ type = "s3", bucket = "bucket", key = "big/{{scheduled:%H%M}}.bin", endpoint = "http://127.0.0.1:{s3_port}", region = "us-east-1", path_style = true, access_key_id = "AKIA", secret_access_key = "SECRET" }}'))
    if ftp_port:
        bigs.append(("big-ftp", f'{{ type = "ftp", host = "127.0.0.1", port = {ftp_port}, path = "{ftp_dir}/big-{{scheduled:%H%M}}.bin", username = "anonymous", password = "x", allow_plaintext_password = true }}'))
    for name, writer in bigs:
        lines.append(f"""[[jobs]]
name = "{name}"
schedule = "0 * * * * *"
{grace}source = {{ type = "file", path = "{big}" }}
writers = [{writer}]
rate_limit = "{args.big_rate}"
retry = {{ max_attempts = 30, initial_interval = "1s", max_interval = "5s" }}
on_success = ["hook"]
on_failure = ["hook"]
""")
    path = os.path.join(work, "jobs.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path, [name for name, _ in bigs]


class Daemon:
    def __init__(self, index, ferry, config, logs):
        self.index, self.ferry, self.config, self.logs = index, ferry, config, logs
        self.proc, self.starts = None, 0

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.logs, f"daemon-{self.index}-{self.starts}.log"), "w")
        self.proc = subprocess.Popen(
            [self.ferry, "--log-format", "json", "run", "-c", self.config],
            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "FERRY_LOG": "info"},
        )

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)


def read_logs(logs):
    for name in sorted(os.listdir(logs)):
        with open(os.path.join(logs, name)) as f:
            for line in f:
                try:
                    yield name, json.loads(line)
                except ValueError:
                    continue


def run_span(event):
    for span in event.get("spans", []):
        if span.get("name") == "run":
            return span
    return {}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ferry", default="target/release/ferry")
    p.add_argument("--daemons", type=int, default=3)
    p.add_argument("--duration", type=int, default=600, help="seconds of chaos")
    p.add_argument("--settle", type=int, default=60, help="seconds after the chaos, all daemons up")
    p.add_argument("--jobs", type=int, default=200, help="small jobs firing every second")
    p.add_argument("--big-mib", type=int, default=256)
    p.add_argument("--big-rate", default="8MiB", help="rate_limit of the big deliveries")
    p.add_argument("--lease", default="20s")
    p.add_argument("--kill-every", type=float, default=30)
    p.add_argument("--restart-after", type=float, default=5)
    p.add_argument("--sigstop", type=float, default=0, help="at this second, SIGSTOP a daemon for 1.5 leases")
    p.add_argument("--pg-restart", type=float, default=0, help="at this second, restart PostgreSQL (systemctl/pg_ctlcluster)")
    p.add_argument("--pg-stop", type=float, default=0,
                   help="with --pg-restart: stop PostgreSQL (at the next second 55 of a minute, so a big slot falls in the outage) for this many seconds")
    p.add_argument("--misfire-grace", default=None, help="every job's misfire_grace (e.g. 2m)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--aim", action="store_true", help="kill a daemon running a big delivery when there is one")
    p.add_argument("--keep", action="store_true", help="keep the work directory and database")
    args = p.parse_args()
    rng = random.Random(args.seed)
    ferry = os.path.abspath(args.ferry)
    if not os.access(ferry, os.X_OK):
        sys.exit(f"{ferry} is not executable: cargo build --release")

    work = tempfile.mkdtemp(prefix="ferry-chaos-", dir=os.environ.get("TMPDIR"))
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    db = f"ferry_chaos_{os.getpid()}"
    psql("test", f"CREATE DATABASE {db}")
    servers = []
    try:
        big = os.path.join(work, "big.bin")
        digest = hashlib.sha256()
        with open(big, "wb") as f:
            for _ in range(args.big_mib):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                f.write(chunk)
        source_sha = digest.hexdigest()

        hook_port = free_port()
        hooks = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Hooks)
        threading.Thread(target=hooks.serve_forever, daemon=True).start()
        s3_port = ftp_port = ftp_dir = None
        if os.environ.get("FERRY_BENCH_S3_SERVER"):
            proc, s3_port = start_s3(os.path.expanduser(os.environ["FERRY_BENCH_S3_SERVER"]), os.path.join(work, "s3"))
            servers.append(proc)
        if os.environ.get("FERRY_BENCH_VSFTPD"):
            proc, ftp_port, ftp_dir = start_vsftpd(os.environ["FERRY_BENCH_VSFTPD"], work)
            servers.append(proc)
        config, big_jobs = job_file(work, db, args, hook_port, s3_port, ftp_port, ftp_dir)
        print(f"work dir {work}, database {db}, {args.daemons} daemons, {args.jobs} jobs every second, "
              f"big: {', '.join(big_jobs)} ({args.big_mib} MiB at {args.big_rate} every minute)", flush=True)

        daemons = [Daemon(i, ferry, config, logs) for i in range(args.daemons)]
        for d in daemons:
            d.start()
        began = time.time()
        next_kill = began + args.kill_every
        restarts = []  # (when, daemon)
        kills = stops = 0
        stopped = None
        pg_restarted = False
        outage = None  # [stopped, started again] of PostgreSQL
        while time.time() - began < args.duration:
            now = time.time()
            for when, d in list(restarts):
                if now >= when:
                    d.start()
                    restarts.remove((when, d))
            if now >= next_kill:
                candidates = [d for d in daemons if d.alive() and d is not stopped]
                if args.aim:
                    candidates = aimed(db, candidates)
                if candidates:
                    victim = rng.choice(candidates)
                    victim.signal(signal.SIGKILL)
                    victim.proc.wait()
                    kills += 1
                    restarts.append((now + args.restart_after, victim))
                    print(f"{now - began:6.1f}s SIGKILL daemon {victim.index}", flush=True)
                next_kill += args.kill_every
            if args.sigstop and stopped is None and now - began >= args.sigstop:
                candidates = [d for d in daemons if d.alive()]
                running = aimed(db, candidates, strict=True)
                if args.aim and not running:
                    time.sleep(0.5)  # wait for a big delivery to stop in
                    continue
                stopped = rng.choice(running if args.aim else candidates)
                stopped.signal(signal.SIGSTOP)
                stops += 1
                resume_at = now + 1.5 * parse_secs(args.lease)
                print(f"{now - began:6.1f}s SIGSTOP daemon {stopped.index}", flush=True)
            if stopped is not None and stops == 1 and now >= resume_at:
                stopped.signal(signal.SIGCONT)
                print(f"{now - began:6.1f}s SIGCONT daemon {stopped.index}", flush=True)
                stops = 2
            if args.pg_restart and not pg_restarted and now - began >= args.pg_restart:
                if args.aim and not aimed(db, daemons, strict=True):
                    time.sleep(0.5)  # wait for a big delivery to restart under
                    continue
                if args.pg_stop and now % 60 < 55:
                    time.sleep(0.1)  # stop it 5 s before a minute: the big jobs' slot falls in it
                    continue
                pg_restarted = True
                if args.pg_stop:
                    print(f"{now - began:6.1f}s stopping PostgreSQL for {args.pg_stop:.0f} s", flush=True)
                    postgres("stop")
                    outage = [time.time(), None]
                else:
                    print(f"{now - began:6.1f}s restarting PostgreSQL", flush=True)
                    postgres("restart")
                    print(f"{time.time() - began:6.1f}s PostgreSQL back", flush=True)
            if outage and outage[1] is None and now - outage[0] >= args.pg_stop:
                postgres("start")
                outage[1] = time.time()
                print(f"{outage[1] - began:6.1f}s PostgreSQL back", flush=True)
            time.sleep(0.1)
        chaos_end = time.time()
        for _, d in restarts:
            d.start()
        if stops == 1:
            stopped.signal(signal.SIGCONT)
        print(f"chaos over after {args.duration} s ({kills} kills); {args.settle} s to settle", flush=True)
        time.sleep(args.settle)
        for d in daemons:
            d.signal(signal.SIGTERM)
        for d in daemons:
            if d.proc:
                try:
                    d.proc.wait(30)
                except subprocess.TimeoutExpired:
                    d.signal(signal.SIGKILL)
        hooks.shutdown()
        ok = report(args, db, logs, began, chaos_end, big_jobs, source_sha, outage)
    finally:
        for proc in servers:
            proc.kill()
        if not args.keep:
            psql("test", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


def aimed(db, candidates, strict=False):
    """The candidates running a big delivery, if any (else all, or none when `strict`): so
    that a kill or a stop interrupts one and its resume is exercised."""
    owners = {row[0].split("/")[1] for row in psql(
        db, "SELECT owner FROM ferry_runs WHERE job LIKE 'big-%' AND state = 'running' AND attempts > 0")}
    running = [d for d in candidates if str(d.proc.pid) in owners]
    return running if running or strict else candidates


def parse_secs(text):
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def postgres(action):
    """Stops, starts or restarts the local PostgreSQL (waiting for its port unless stopped)."""
    for cmd in (["pg_ctlcluster", "15", "main", action], ["service", "postgresql", action]):
        if shutil.which(cmd[0]) and subprocess.run(cmd).returncode == 0:
            break
    if action != "stop":
        wait_port(5432, 60)


def report(args, db, logs, began, chaos_end, big_jobs, source_sha, outage):
    started = collections.Counter()
    skipped = set()
    first_ready = None
    takeovers = lost = fenced_outcomes = caught_up = 0
    for name, event in read_logs(logs):
        message = event.get("fields", {}).get("message", "")
        if message == "Run started.":
            span = run_span(event)
            started[(span.get("job"), span.get("slot"))] += 1
        elif message.startswith("Skipped:"):
            fields = event.get("fields", {})
            skipped.add((fields.get("job"), fields.get("slot")))
        elif message.startswith("Ready") and first_ready is None:
            first_ready = event.get("timestamp")
        elif message.startswith("The state store answers again: catching up"):
            caught_up += 1
        elif message == "Resuming a run left unfinished.":
            takeovers += 1
        elif message.startswith("The run is no longer this daemon's"):
            lost += 1
            if "outcome" in str(event.get("fields", {}).get("reason", "")):
                fenced_outcomes += 1
    duplicates = {key: n for key, n in started.items() if n > 1}

    # Slots of the small jobs from 3 s after the start to 3 s before the chaos ended.
    rows = psql(db, "SELECT job, slot FROM ferry_runs WHERE job LIKE 'small-%' AND claim_key = ''")
    have = collections.defaultdict(set)
    for job, slot in rows:
        have[job].add(int(slot) // 1000)
    lo, hi = int(began) + 3, int(chaos_end) - 3
    # The seconds of a PostgreSQL outage (and the few after it while the pools reconnect):
    # their claims fail, and at most one run per job makes them up.
    down = set()
    if outage:
        down = set(range(int(outage[0]) - 1, int(outage[1] or chaos_end) + 6))
    expected = args.jobs * sum(1 for s in range(lo, hi + 1) if s not in down)
    # A slot skipped by `overlap = "skip"` (its previous run still going: e.g. recording its
    # outcome while PostgreSQL restarts) is logged as such and counted apart.
    skipped_secs = {(job, int(datetime.datetime.fromisoformat(slot).timestamp())) for job, slot in skipped if job and slot}
    gaps = [(f"small-{i:04}", s) for i in range(args.jobs) for s in range(lo, hi + 1)
            if s not in have[f"small-{i:04}"] and s not in down]
    missed = sum(1 for gap in gaps if gap not in skipped_secs)
    overlapped = len(gaps) - missed
    failed_small = int(psql(db, "SELECT count(*) FROM ferry_runs WHERE job LIKE 'small-%' AND state <> 'succeeded'")[0][0])

    bigs = psql(db, "SELECT job, run_id, state, attempts, coalesce(sha256, ''), coalesce(bytes, 0), epoch, slot FROM ferry_runs "
                    "WHERE job LIKE 'big-%' ORDER BY job, slot")
    calls = collections.Counter(call.get("run_id") for call in Hooks.calls)
    resumed = {call.get("run_id"): call.get("resumed_from", 0) for call in Hooks.calls}
    outbox = psql(db, "SELECT state, count(*) FROM ferry_outbox GROUP BY state")
    print()
    print(f"small jobs: {expected} slots expected, {missed} missed, {overlapped} skipped by overlap = \"skip\" "
          f"(previous run still going), {len(duplicates)} started twice, {failed_small} not succeeded (still running or failed)")
    if outage:
        ran = sum(1 for i in range(args.jobs) for s in down if s in have[f"small-{i:04}"])
        print(f"PostgreSQL outage {outage[0] - began:.0f}-{(outage[1] or chaos_end) - began:.0f} s: of the "
              f"{args.jobs * len(down)} small slots of its seconds (and 5 after), {ran} ran (late, or as "
              f"catch-up runs); catch-up runs logged: {caught_up}")
    print(f"take-overs logged: {takeovers}; runs given up by fencing: {lost}")
    print("big deliveries:")
    print(f"  {'job':10} {'run':34} {'state':10} {'att':>3} {'epoch':>5} {'resumed_from':>13} {'sha256 ok':9} {'hooks':>5}")
    bad_big = cut = 0
    for job, run_id, state, attempts, sha, size, epoch, slot in bigs:
        sha_ok = sha == source_sha
        n = calls.get(run_id, 0)
        # Started in the settling time and still going when the daemons were stopped: the
        # final shutdown cut it (it resumes at the next start), not the chaos.
        if state == "running" and int(slot) / 1000 >= chaos_end:
            cut += 1
            print(f"  {job:10} {run_id:34} {state:10} {attempts:>3} {epoch:>5} {'-':>13} {'-':9} {n:>5}  (cut by the final shutdown)")
            continue
        good = state == "succeeded" and sha_ok and n == 1
        bad_big += not good
        print(f"  {job:10} {run_id:34} {state:10} {attempts:>3} {epoch:>5} {resumed.get(run_id, '-'):>13} {str(sha_ok):9} {n:>5}"
              + ("" if good else "  <--"))
    # Every minute slot of the big jobs from the first whole minute to the end of the chaos
    # has a run (one missed in an outage is made up within misfire_grace).
    minutes = range((int(began) // 60 + 1) * 60, int(chaos_end), 60)
    big_missing = [(job, m) for job in big_jobs for m in minutes
                   if not any(row[0] == job and int(row[7]) // 1000 == m for row in bigs)]
    if big_missing:
        bad_big += len(big_missing)
        print(f"  big slots without a run: {[(job, time.strftime('%H:%M', time.gmtime(m))) for job, m in big_missing]}  <--")
    interrupted = [row for row in bigs if int(row[3]) > 1]
    from_checkpoint = sum(1 for row in interrupted if (resumed.get(row[1]) or 0) > 0)
    print(f"  {len(bigs) - cut} big runs before the end of the chaos, {len(interrupted)} interrupted and finished by another attempt "
          f"({from_checkpoint} of them from a checkpoint, resumed_from > 0; the others were cut "
          f"before their first checkpoint), {bad_big} not right")
    print(f"outbox: {dict((s, int(n)) for s, n in outbox)}; webhook calls {len(Hooks.calls)} "
          f"for {len(calls)} runs, {sum(1 for n in calls.values() if n > 1)} runs told twice")
    unsent = sum(int(n) for s, n in outbox if s != "sent")
    ok = not duplicates and missed == 0 and bad_big == 0 and unsent == 0 and all(n == 1 for n in calls.values())
    print("RESULT:", "all checks hold" if ok else "SOME CHECKS FAILED")
    if duplicates:
        print("  started twice:", list(duplicates)[:10])
    return ok


if __name__ == "__main__":
    main()
