#!/usr/bin/env python3
"""Resident memory of mjgate under hostile load (driven by bench/hardening.sh).

Every scenario starts its own simulator and gateway (and receiver, Redis) on 127.0.0.1, reads the
gateway's RSS from /proc/PID/status (VmRSS, VmHWM) before, during and after the load, scrapes
/metrics, prints a markdown table and stops everything it started. Nothing leaves loopback.

    hardening.py all                      # every scenario (about 15 minutes)
    hardening.py hooks large streams h2 bodies redis
    hardening.py receiver --port P --status 200   # the hook receiver (run by the scenarios)
"""
import argparse
import asyncio
import atexit
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HOST = "127.0.0.1"  # everything here listens on and connects to loopback only
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MiB = 1 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Procs:
    """Children started under `timeout`, each stopped by its own pid at the end."""

    def __init__(self, work):
        self.work = work
        self.procs = []
        atexit.register(self.stop_all)

    def start(self, name, cmd, limit_s=900, env=None, stdin=None):
        err = open(os.path.join(self.work, f"{name}.err"), "ab")
        full = ["timeout", "-s", "TERM", "-k", "5", f"{int(limit_s)}s", *cmd]
        p = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=err, stdin=stdin,
                             env=env, start_new_session=True)
        p.name, p.errfile = name, err.name
        self.procs.append(p)
        return p

    def stop(self, p, grace=10):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)  # timeout passes it to its child
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                for pid in [child_pid(p), p.pid]:
                    if pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, grace=5)


def child_pid(p, wait_s=5.0):
    """The pid of the program `timeout` runs (the one whose RSS we read)."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except FileNotFoundError:
            return None
        time.sleep(0.02)
    return None


def wait_port(port, s=10.0):
    deadline = time.time() + s
    while time.time() < deadline:
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def rss(pid):
    return status_kb(pid, "VmRSS")


def hwm(pid):
    return status_kb(pid, "VmHWM")


class Sampler(threading.Thread):
    """Reads VmRSS every `period` seconds; keeps the peak and the series."""

    def __init__(self, pid, period=0.1):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak, self.series, self.stopped = 0, [], threading.Event()
        self.t0 = time.time()

    def run(self):
        while not self.stopped.is_set():
            r = rss(self.pid)
            self.peak = max(self.peak, r)
            self.series.append((time.time() - self.t0, r))
            self.stopped.wait(self.period)

    def stop(self):
        self.stopped.set()
        self.join(2)


def mb(b):
    return f"{b / 1e6:.1f}"


# ---------------------------------------------------------------- metrics and HTTP


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        log(f"metrics scrape failed: {e}")
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def m(ms, name):
    """Sum of a metric over its labels (or the one labelled series when `name` carries labels)."""
    if "{" in name:
        return ms.get(name, 0)
    return sum(v for k, v in ms.items() if k == name or k.startswith(name + "{"))


def labelled(ms, name):
    return {k[len(name):]: int(v) for k, v in ms.items() if k.startswith(name + "{") and v}


def http_get(port, path, headers=None, timeout=30):
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    if "content-length" in hdrs:
        body = await reader.readexactly(int(hdrs["content-length"]))
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        body = b""
    return status, hdrs, body


async def submit_all(port, bodies_and_creds, conns=64, deadline_s=300):
    """POSTs each (body, credential) to /mj/submit/imagine over `conns` keep-alive connections."""
    queue = list(enumerate(bodies_and_creds))
    results = {}
    t_end = time.time() + deadline_s

    async def worker():
        reader = writer = None
        while queue and time.time() < t_end:
            i, (body, cred) = queue.pop()
            for _attempt in range(2):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
                    writer.write(
                        (f"POST /mj/submit/imagine HTTP/1.1\r\nHost: x\r\nAuthorization: {cred}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                        + body)
                    status, _, answer = await asyncio.wait_for(read_response(reader), 60)
                    results[i] = (status, answer)
                    break
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    results[i] = (0, str(e).encode())
                    if writer:
                        writer.close()
                    reader = writer = None
        if writer:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return results


def submit_summary(results):
    codes = {}
    accepted = 0
    for status, answer in results.values():
        if status not in codes and status != 200:
            log(f"first {status} answer to a submit: {answer[:300]!r}")
        codes[status] = codes.get(status, 0) + 1
        if status == 200 and b'"code":1' in answer:
            accepted += 1
    return accepted, codes


# ---------------------------------------------------------------- the hook receiver


def receiver_main(port, status):
    stats = {"posts": 0, "bytes": 0, "conns": 0}
    reason = {200: "OK", 500: "Internal Server Error"}.get(status, "X")

    async def handle(reader, writer):
        stats["conns"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                first, _, rest = head.decode("latin-1").partition("\r\n")
                hdrs = dict((k.strip().lower(), v.strip()) for k, _, v in
                            (line.partition(":") for line in rest.split("\r\n") if line))
                n = 0
                if "content-length" in hdrs:
                    n = int(hdrs["content-length"])
                    await reader.readexactly(n)
                elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        n += size
                        if size == 0:
                            break
                if first.startswith("GET /stats"):
                    body = json.dumps(stats).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    stats["posts"] += 1
                    stats["bytes"] += n
                    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, port, limit=1 << 20, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def receiver_stats(port):
    try:
        return json.loads(http_get(port, "/stats", timeout=10)[1])
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- the rig


class Rig:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin
        self.work = tempfile.mkdtemp(prefix="mjgate-hardening.")
        self.procs = Procs(self.work)
        self.sim_port, self.gw_port, self.recv_port, self.redis_port = args.ports
        self.gw = None
        self.gw_runs = 0

    def simulator(self, *extra):
        p = self.procs.start("simulator", [self.bin, "simulator", "--listen", f"{HOST}:{self.sim_port}", *extra])
        wait_port(self.sim_port)
        return p

    def receiver(self, status):
        p = self.procs.start("receiver", [sys.executable, os.path.abspath(__file__), "receiver",
                                          "--port", str(self.recv_port), "--status", str(status)])
        wait_port(self.recv_port)
        return p

    def gateway(self, toml):
        self.gw_runs += 1
        path = os.path.join(self.work, f"gateway-{self.gw_runs}.toml")
        with open(path, "w") as f:
            f.write(toml)
        self.gw_config = toml
        # MJGATE_WRAP="heaptrack -o /tmp/ht" profiles the gateway (its pid is found under the wrapper).
        wrap = os.environ.get("MJGATE_WRAP", "").split()
        p = self.procs.start("gateway", [*wrap, self.bin, "--config", path])
        p.gw_pid = child_pid(p)
        wait_port(self.gw_port)
        for _ in range(50):
            if http_get(self.gw_port, "/healthz")[0] == 200:
                break
            time.sleep(0.1)
        self.gw = p
        return p

    def stop(self, p):
        self.procs.stop(p)

    def gateway_stderr(self):
        """Counts of panics, ERROR and WARN lines in the gateway's stderr so far, and a few of them."""
        try:
            text = open(os.path.join(self.work, "gateway.err"), errors="replace").read()
        except FileNotFoundError:
            return "no stderr"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        lines = text.splitlines()
        panics = [line for line in lines if "panick" in line]
        errors = [line for line in lines if " ERROR " in line]
        warns = [line for line in lines if " WARN " in line]
        out = f"{len(panics)} panics, {len(errors)} ERROR, {len(warns)} WARN lines"
        kinds = {}
        for line in errors + warns:
            key = re.sub(r"^\S+\s+", "", line)[:110]
            key = re.sub(r"\d+", "N", key)
            kinds[key] = kinds.get(key, 0) + 1
        for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:6]:
            out += f"\n    {n} x {k}"
        for line in panics[:3]:
            out += f"\n    PANIC {line[:200]}"
        return out

    def reset_stderr(self):
        try:
            os.remove(os.path.join(self.work, "gateway.err"))
        except FileNotFoundError:
            pass


def gateway_toml(rig, **over):
    """The brief's config, with a table's keys replaced or added by `over` ({'webhooks.first_retry': '2s'})."""
    tables = {
        "": {"listen": f'"{HOST}:{rig.gw_port}"'},
        "upstream": {"url": f'"http://{HOST}:{rig.sim_port}"'},
        "cache": {"in_progress_ttl": '"1s"'},
        "webhooks": {"secret": f'"{SECRET}"', "allow_private": "true", "first_retry": '"1s"',
                     "max_memory": '"64MiB"', "max_pending": "100000", "max_pending_per_credential": "100000"},
        "watch": {"heartbeat": '"15s"', "stream_buffer": '"64MiB"', "max_open": "100000",
                  "max_open_per_credential": "100000"},
        "server": {"max_connections": "100000", "body_buffer_total": '"64MiB"'},
        "batch": {"max_body": '"1MiB"'},
        "log": {"filter": '"warn"'},
    }
    for key, value in over.items():
        table, _, k = key.rpartition(".")
        tables.setdefault(table, {})
        if value is None:
            tables[table].pop(k, None)
        else:
            tables[table][k] = value
    out = "".join(f"{k} = {v}\n" for k, v in tables.pop("").items())
    for name, keys in tables.items():
        out += f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    return out


def print_table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


# ---------------------------------------------------------------- 1. pending webhooks


def scenario_hooks(rig, n, distinct):
    a = rig.args
    rig.reset_stderr()
    sim = rig.simulator("--tasks", "0", "--credential", "Bearer sk-x", "--task-duration", "600s")
    recv = rig.receiver(200)
    gw = rig.gateway(gateway_toml(rig))
    pid = gw.gw_pid
    time.sleep(1)
    before = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    hook = f"http://{HOST}:{rig.recv_port}/hook"
    items = []
    for i in range(n):
        cred = f"Bearer sk-{i}" if distinct else "Bearer sk-x"
        items.append((json.dumps({"prompt": f"a small cat number {i}", "notifyHook": hook}).encode(), cred))
    t0 = time.time()
    results = asyncio.run(submit_all(rig.gw_port, items, conns=a.submit_conns))
    t_submit = time.time() - t0
    accepted, codes = submit_summary(results)
    # all pending: the gauge reaches the accepted count (or 10 s pass)
    deadline = time.time() + 10
    ms = metrics(rig.gw_port)
    while m(ms, "mjgate_webhook_pending") < accepted and time.time() < deadline:
        time.sleep(0.2)
        ms = metrics(rig.gw_port)
    pending_rss = rss(pid)
    pending_ms = ms
    log(f"hooks n={n} distinct={distinct}: submitted in {t_submit:.1f}s, accepted {accepted}, codes {codes}, "
        f"pending {m(ms, 'mjgate_webhook_pending'):.0f}, RSS {mb(pending_rss)} MB")
    # while they are tracked and delivered (tasks made by a submit finish 60 s after it)
    series = []
    peak_mem = m(ms, "mjgate_webhook_memory_bytes")
    t_hold_end = t0 + a.hooks_watch
    while time.time() < t_hold_end:
        time.sleep(5)
        ms = metrics(rig.gw_port)
        peak_mem = max(peak_mem, m(ms, "mjgate_webhook_memory_bytes"))
        series.append((time.time() - t0, rss(pid), m(ms, "mjgate_webhook_pending"),
                       m(ms, "mjgate_webhook_memory_bytes"), receiver_stats(rig.recv_port).get("posts", 0)))
        log(f"  t={series[-1][0]:.0f}s RSS {mb(series[-1][1])} MB pending {series[-1][2]:.0f} "
            f"mem {series[-1][3]:.0f} posts {series[-1][4]}")
        if series[-1][2] == 0:
            break
    time.sleep(2)
    after = rss(pid)
    ms_after = metrics(rig.gw_port)
    sampler.stop()
    peak = max(sampler.peak, hwm(pid))
    rstats = receiver_stats(rig.recv_port)
    simstats = json.loads(http_get(rig.sim_port, "/_sim/stats")[1])
    stderr = rig.gateway_stderr()
    for p in (gw, recv, sim):
        rig.stop(p)
    held = max(m(pending_ms, "mjgate_webhook_pending"), 1)
    return {
        "n": n, "distinct": distinct, "accepted": accepted, "codes": codes, "t_submit": t_submit,
        "before": before, "pending_rss": pending_rss, "peak": peak, "after": after,
        "pending": m(pending_ms, "mjgate_webhook_pending"),
        "mem_pending": m(pending_ms, "mjgate_webhook_memory_bytes"), "mem_peak": peak_mem,
        "per_hook": (pending_rss - before) / held,
        "per_hook_peak": (peak - before) / held,
        "deliveries": labelled(ms_after, "mjgate_webhook_deliveries_total"),
        "attempts": labelled(ms_after, "mjgate_webhook_attempts_total"),
        "pending_after": m(ms_after, "mjgate_webhook_pending"),
        "mem_after": m(ms_after, "mjgate_webhook_memory_bytes"),
        "cache_pending": m(pending_ms, "mjgate_cache_weighted_bytes"),
        "receiver": rstats, "sim": simstats, "series": series, "stderr": stderr,
    }


def run_hooks(rig):
    a = rig.args
    runs = [scenario_hooks(rig, a.hooks, False), scenario_hooks(rig, a.hooks_distinct, True)]
    rows = []
    for r in runs:
        rows.append([
            f"{r['n']:,} submits, {'distinct credentials' if r['distinct'] else 'one credential'}",
            f"{r['accepted']:,} ({r['t_submit']:.1f} s)", f"{r['pending']:,.0f}",
            mb(r["before"]), mb(r["pending_rss"]), mb(r["peak"]), mb(r["after"]),
            f"**{r['per_hook']:,.0f}**", f"{r['per_hook_peak']:,.0f}",
            f"{r['mem_pending']:,.0f} ({r['mem_pending'] / max(r['pending'], 1):,.0f}/hook)",
            f"{r['mem_peak']:,.0f}", f"{r['receiver'].get('posts', 0):,}",
        ])
    print_table("1. Pending webhooks (receiver answers 200)",
                ["run", "accepted (submit time)", "pending", "RSS before (MB)", "RSS all pending (MB)",
                 "RSS peak (MB)", "RSS after (MB)", "bytes per pending hook", "peak bytes per hook",
                 "webhook_memory_bytes when pending", "webhook_memory_bytes peak", "hook POSTs received"],
                rows)
    for r in runs:
        print(f"\n- {r['n']:,} ({'distinct' if r['distinct'] else 'one'}): submit codes {r['codes']}; "
              f"deliveries {r['deliveries']}; attempts {r['attempts']}; pending after {r['pending_after']:.0f}, "
              f"webhook memory after {r['mem_after']:.0f}; cache weighted bytes when pending "
              f"{r['cache_pending']:,.0f}; upstream calls {r['sim'].get('total')}")
        print("  RSS over time (s: MB / pending / webhook bytes / POSTs): " + ", ".join(
            f"{t:.0f}: {mb(x)}/{p:.0f}/{mem:.0f}/{posts}" for t, x, p, mem, posts in r["series"]))
        print(f"  gateway stderr: {r['stderr']}")
    return runs


# ---------------------------------------------------------------- 2. large bodies held for retry


def run_large(rig):
    a = rig.args
    rig.reset_stderr()
    sim = rig.simulator("--tasks", "0", "--credential", "Bearer sk-x", "--task-duration", "20s")
    recv = rig.receiver(500)
    gw = rig.gateway(gateway_toml(rig, **{"webhooks.first_retry": '"2s"'}))
    pid = gw.gw_pid
    time.sleep(1)
    before = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    hook = f"http://{HOST}:{rig.recv_port}/hook"
    rnd = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    items = []
    for i in range(a.large):
        prompt = f"{i} " + "".join(rnd.choices(letters, k=a.large_prompt))
        items.append((json.dumps({"prompt": prompt, "notifyHook": hook}).encode(), "Bearer sk-x"))
    t0 = time.time()
    results = asyncio.run(submit_all(rig.gw_port, items, conns=a.submit_conns))
    t_submit = time.time() - t0
    accepted, codes = submit_summary(results)
    log(f"large: {accepted} accepted in {t_submit:.1f}s, codes {codes}")
    series = []
    peak_mem = 0
    peak_cache = 0
    while time.time() < t0 + a.large_watch:
        time.sleep(5)
        ms = metrics(rig.gw_port)
        peak_mem = max(peak_mem, m(ms, "mjgate_webhook_memory_bytes"))
        peak_cache = max(peak_cache, m(ms, "mjgate_cache_weighted_bytes"))
        series.append((time.time() - t0, rss(pid), m(ms, "mjgate_webhook_pending"),
                       m(ms, "mjgate_webhook_memory_bytes"), m(ms, "mjgate_cache_weighted_bytes"),
                       m(ms, 'mjgate_webhook_attempts_total')))
        log(f"  t={series[-1][0]:.0f}s RSS {mb(series[-1][1])} MB pending {series[-1][2]:.0f} "
            f"hookmem {series[-1][3]:.0f} cache {series[-1][4]:.0f} attempts {series[-1][5]:.0f}")
    ms = metrics(rig.gw_port)
    sampler.stop()
    peak = max(sampler.peak, hwm(pid))
    plateau = series[-3:]
    plateau_rss = sum(x[1] for x in plateau) / max(len(plateau), 1)
    rstats = receiver_stats(rig.recv_port)
    stderr = rig.gateway_stderr()
    for p in (gw, recv, sim):
        rig.stop(p)
    budget = 256 * MiB + 64 * MiB
    answer = a.large_prompt * 3
    print_table("2. Large bodies held for retry (receiver answers 500, first_retry 2s)",
                ["submits", "RSS before (MB)", "RSS peak (MB)", "RSS plateau, last 15 s (MB)",
                 "webhook_memory_bytes peak", "cache_weighted_bytes peak", "budgets (cache 256 MiB + hooks 64 MiB)",
                 "peak / budgets", "hook attempts received"],
                [[f"{accepted:,} of {a.large:,}, ~{a.large_prompt // 1000} KB prompt (~{answer // 1000} KB answer), "
                  f"{t_submit:.1f} s", mb(before), mb(peak), mb(plateau_rss), f"{peak_mem:,.0f}",
                  f"{peak_cache:,.0f}", mb(budget), f"{peak / budget:.2f}", f"{rstats.get('posts', 0):,}"]])
    print(f"\n- submit codes {codes}; deliveries {labelled(ms, 'mjgate_webhook_deliveries_total')}; "
          f"attempts {labelled(ms, 'mjgate_webhook_attempts_total')}; pending at end {m(ms, 'mjgate_webhook_pending'):.0f}; "
          f"cache entries {labelled(ms, 'mjgate_cache_entries')}")
    print("  over time (s: RSS MB / pending / webhook bytes / cache weighted bytes / attempts): " + ", ".join(
        f"{t:.0f}: {mb(x)}/{p:.0f}/{hm:.0f}/{c:.0f}/{at:.0f}" for t, x, p, hm, c, at in series))
    print(f"  gateway stderr: {stderr}")


# ---------------------------------------------------------------- 3. event streams never read


def open_stalled(n, port, rcvbuf, paths, cred):
    socks, failed = [], 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        try:
            s.connect((HOST, port))
            s.sendall(f"GET {paths(i)} HTTP/1.1\r\nHost: x\r\nAuthorization: {cred}\r\n\r\n".encode())
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    return socks, failed


def stream_row(t, pid, ms):
    return (t, rss(pid), m(ms, "mjgate_open_streams"), m(ms, "mjgate_stream_buffered_bytes"),
            m(ms, "mjgate_streams_cut_total"), m(ms, "mjgate_events_sent_total"),
            m(ms, "mjgate_client_connections"))


def run_streams(rig):
    a = rig.args
    rig.reset_stderr()
    sim = rig.simulator("--tasks", "50", "--credential", "Bearer sk-x", "--answer-bytes", "102400",
                        "--task-duration", "100s")
    gw = rig.gateway(gateway_toml(rig))
    pid = gw.gw_pid
    time.sleep(1)
    before = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    t0 = time.time()
    socks, failed = open_stalled(a.streams, rig.gw_port, 1024, lambda i: f"/mj/task/task-{i % 50}/events",
                                 "Bearer sk-x")
    t_open = time.time() - t0
    log(f"streams: {len(socks)} open ({failed} failed) in {t_open:.1f}s")
    t0 = time.time()  # the clock starts once every connection is open
    series = []
    for k in range(1, a.streams_watch // 5 + 1):
        time.sleep(max(0, t0 + 5 * k - time.time()))
        series.append(stream_row(time.time() - t0, pid, metrics(rig.gw_port)))
        log("  t=%.0fs RSS %s MB open %d buffered %d cut %d events %d conns %d" % (
            series[-1][0], mb(series[-1][1]), *series[-1][2:]))
    held_peak = max(sampler.peak, hwm(pid))
    # how many connections the gateway closed on us (cut): a peek sees EOF or RST after the data
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                d = s.recv(1 << 16)
                if not d:
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    t_close = time.time()
    time.sleep(10)
    after = rss(pid)
    ms = metrics(rig.gw_port)
    series.append(stream_row(time.time() - t0, pid, ms))
    sampler.stop()
    stderr = rig.gateway_stderr()
    rig.stop(gw)
    h2 = run_h2(rig) if "h2" in a.scenarios else None
    rig.stop(sim)
    print_table("3. Event streams whose clients never read (HTTP/1.1, SO_RCVBUF 1024)",
                ["connections (time to open)", "RSS before (MB)", "RSS peak (MB)", f"RSS at {a.streams_watch} s (MB)", "RSS 10 s after close (MB)",
                 "peak bytes per stream", "streams_cut_total at 60 s", "stream_buffered_bytes max",
                 "closed by the gateway before we closed"],
                [[f"{len(socks):,} ({failed} failed, {t_open:.1f} s)", mb(before), mb(held_peak), mb(series[-2][1]), mb(after),
                  f"{(held_peak - before) / max(len(socks), 1):,.0f}", f"{series[-2][4]:,.0f}",
                  f"{max(x[3] for x in series):,.0f}", f"{closed:,}"]])
    print("\n| t (s) | RSS (MB) | open_streams | stream_buffered_bytes | streams_cut_total | events_sent_total | client connections |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, row in enumerate(series):
        t = f"{row[0]:.0f}" + (" (10 s after close)" if i == len(series) - 1 else "")
        print(f"| {t} | {mb(row[1])} | {row[2]:,.0f} | {row[3]:,.0f} | {row[4]:,.0f} | {row[5]:,.0f} | {row[6]:,.0f} |")
    print(f"\n  gateway stderr: {stderr}")
    if h2:
        h2()


# ---- HTTP/2 variant


def run_h2(rig):
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    a = rig.args
    rig.reset_stderr()
    gw = rig.gateway(gateway_toml(rig))
    pid = gw.gw_pid
    time.sleep(1)
    before = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    conns = []
    counts = {"responses": 0, "data_bytes": 0, "resets": 0, "ended": 0, "goaway": 0, "closed": 0}
    statuses = {}
    for c in range(a.h2_conns):
        s = socket.create_connection((HOST, rig.gw_port), 10)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=cfg)
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: a.h2_window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        conns.append([s, conn, 0])
    # the server's SETTINGS first (its MAX_CONCURRENT_STREAMS), then the streams
    def pump(entry, timeout):
        s, conn, _ = entry
        s.settimeout(timeout)
        try:
            data = s.recv(1 << 16)
        except socket.timeout:
            return True
        except OSError:
            data = b""
        if not data:
            counts["closed"] += 1
            return False
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                counts["responses"] += 1
                st = dict(ev.headers).get(":status")
                statuses[st] = statuses.get(st, 0) + 1
            elif isinstance(ev, h2.events.DataReceived):
                counts["data_bytes"] += len(ev.data)  # never acknowledged: no WINDOW_UPDATE
            elif isinstance(ev, h2.events.StreamReset):
                counts["resets"] += 1
            elif isinstance(ev, h2.events.StreamEnded):
                counts["ended"] += 1
            elif isinstance(ev, h2.events.ConnectionTerminated):
                counts["goaway"] += 1
        out = conn.data_to_send()
        if out:
            s.sendall(out)
        return True
    for entry in conns:
        pump(entry, 2)
    opened = 0
    for entry in conns:
        s, conn, _ = entry
        for j in range(a.h2_streams):
            sid = conn.get_next_available_stream_id()
            i = opened
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                    (":path", f"/mj/task/task-{i % 50}/events"),
                                    ("authorization", "Bearer sk-x")], end_stream=True)
            opened += 1
        s.sendall(conn.data_to_send())
    t0 = time.time()
    series = []
    alive = list(conns)
    next_sample = t0 + 5
    while time.time() < t0 + a.h2_watch:
        for entry in list(alive):
            if not pump(entry, 0.05):
                alive.remove(entry)
        if time.time() >= next_sample:
            next_sample += 5
            ms = metrics(rig.gw_port)
            series.append(stream_row(time.time() - t0, pid, ms) + (dict(counts),))
            log("  h2 t=%.0fs RSS %s MB open %d buffered %d cut %d events %d conns %d" % (
                series[-1][0], mb(series[-1][1]), *series[-1][2:7]), counts)
    held_peak = max(sampler.peak, hwm(pid))
    for s, _, _ in conns:
        s.close()
    time.sleep(10)
    after = rss(pid)
    ms = metrics(rig.gw_port)
    series.append(stream_row(time.time() - t0, pid, ms) + (dict(counts),))
    sampler.stop()
    stderr = rig.gateway_stderr()
    rig.stop(gw)

    def report():
        print_table(f"3b. Event streams over h2c, initial stream window {a.h2_window}",
                    ["streams", "RSS before (MB)", "RSS peak (MB)", f"RSS at {a.h2_watch} s (MB)",
                     "RSS 10 s after close (MB)", "peak bytes per stream", "responses / resets / ended / GOAWAY",
                     "DATA bytes received (unacknowledged)"],
                    [[f"{a.h2_conns} × {a.h2_streams} = {opened:,}", mb(before), mb(held_peak), mb(series[-2][1]),
                      mb(after), f"{(held_peak - before) / max(opened, 1):,.0f}",
                      f"{counts['responses']} ({statuses}) / {counts['resets']} / {counts['ended']} / {counts['goaway']}",
                      f"{counts['data_bytes']:,}"]])
        print("\n| t (s) | RSS (MB) | open_streams | stream_buffered_bytes | streams_cut_total | events_sent_total | client connections |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for i, row in enumerate(series):
            t = f"{row[0]:.0f}" + (" (10 s after close)" if i == len(series) - 1 else "")
            print(f"| {t} | {mb(row[1])} | {row[2]:,.0f} | {row[3]:,.0f} | {row[4]:,.0f} | {row[5]:,.0f} | {row[6]:,.0f} |")
        print(f"\n  gateway stderr: {stderr}")
    return report


# ---------------------------------------------------------------- 4. slow batch bodies


async def trickle_all(port, n, seconds, chunk, cl):
    statuses = {}
    conns = []
    first = b'{"ids":["' + b"a" * (chunk - 9)

    async def one(i):
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            statuses["connect failed"] = statuses.get("connect failed", 0) + 1
            return
        conns.append(writer)
        writer.write((f"POST /mj/task/list-by-condition HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-x\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {cl}\r\n\r\n").encode())
        got = {}

        async def read():
            try:
                data = await reader.read(4096)
                got["status"] = data.split(b" ", 2)[1].decode() if data else "closed"
            except (OSError, IndexError) as e:
                got["status"] = f"error {type(e).__name__}"

        rt = asyncio.create_task(read())
        try:
            for k in range(seconds):
                if rt.done():
                    break
                writer.write(first if k == 0 else b"a" * chunk)
                await writer.drain()
                await asyncio.sleep(1)
        except OSError:
            pass
        if not rt.done():
            got.setdefault("status", "no answer (still open)")
            rt.cancel()
        st = got["status"]
        statuses[st] = statuses.get(st, 0) + 1

    # connections arrive over the first second, so the trickles are spread out
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return statuses, conns


def run_bodies(rig):
    a = rig.args
    rig.reset_stderr()
    sim = rig.simulator("--tasks", "10", "--credential", "Bearer sk-x")
    gw = rig.gateway(gateway_toml(rig))
    pid = gw.gw_pid
    time.sleep(1)
    before = rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    series = []
    stop = threading.Event()

    def watch():
        t0 = time.time()
        while not stop.wait(5):
            ms = metrics(rig.gw_port)
            series.append((time.time() - t0, rss(pid), m(ms, "mjgate_request_body_buffered_bytes"),
                           m(ms, "mjgate_request_body_over_budget_total"), m(ms, "mjgate_client_connections")))
            log("  bodies t=%.0fs RSS %s MB buffered %d over %d conns %d" % (
                series[-1][0], mb(series[-1][1]), *series[-1][2:]))

    w = threading.Thread(target=watch, daemon=True)
    w.start()

    async def main():
        statuses, conns = await trickle_all(rig.gw_port, a.bodies, a.trickle, 1024, 1048576)
        ms = metrics(rig.gw_port)
        held = rss(pid)
        for wr in conns:
            wr.close()
        return statuses, ms, held

    statuses, ms_held, held = asyncio.run(main())
    stop.set()
    w.join(6)
    time.sleep(10)
    after = rss(pid)
    ms_after = metrics(rig.gw_port)
    sampler.stop()
    peak = max(sampler.peak, hwm(pid))
    stderr = rig.gateway_stderr()
    rig.stop(gw)
    rig.stop(sim)
    buffered_max = max([x[2] for x in series] + [m(ms_held, "mjgate_request_body_buffered_bytes")])
    print_table(f"4. Slow batch bodies (Content-Length 1 MiB, 1 KB per second for {a.trickle} s)",
                ["connections (time to open)", "RSS before (MB)", "RSS peak (MB)", f"RSS at {a.trickle} s (MB)",
                 "RSS 10 s after close (MB)", "request_body_buffered_bytes max", "over_budget_total",
                 "answers"],
                [[f"{a.bodies:,}", mb(before), mb(peak), mb(held), mb(after), f"{buffered_max:,.0f}",
                  f"{m(ms_after, 'mjgate_request_body_over_budget_total'):,.0f}",
                  ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))]])
    print("\n  over time (s: RSS MB / body bytes buffered / over budget / connections): " + ", ".join(
        f"{t:.0f}: {mb(x)}/{b:.0f}/{o:.0f}/{c:.0f}" for t, x, b, o, c in series))
    print(f"  after close: body bytes buffered {m(ms_after, 'mjgate_request_body_buffered_bytes'):.0f}, "
          f"requests {labelled(ms_after, 'mjgate_requests_total')}")
    print(f"  gateway stderr: {stderr}")


# ---------------------------------------------------------------- 5. Redis values


def redis_cli(port, *args, stdin=None):
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
        r = subprocess.run(["timeout", "60", "redis-cli", "-h", HOST, "-p", str(port), *args], stdin=f,
                           capture_output=True)
    return r.stdout.decode(errors="replace").strip()


def run_redis(rig):
    a = rig.args
    rig.reset_stderr()
    port = rig.redis_port
    redis = rig.procs.start("redis", ["redis-server", "--bind", HOST, "--port", str(port), "--save", "",
                                      "--appendonly", "no", "--dir", rig.work])
    wait_port(port)
    sim = rig.simulator("--tasks", str(a.redis_keys), "--credential", "Bearer sk-x")
    toml = gateway_toml(rig, **{
        "shared_cache.redis_url": f'"redis://{HOST}:{port}"',
        "shared_cache.fingerprint_secret": '"0123456789abcdef0123456789abcdef"',
    })
    gw = rig.gateway(toml)
    auth = {"Authorization": "Bearer sk-x"}
    st, _ = http_get(rig.gw_port, "/mj/task/task-0/fetch", auth)
    time.sleep(1)
    keys = redis_cli(port, "--scan").split()
    log(f"redis: first fetch {st}; keys {keys}")
    key0 = next(k for k in keys if k.endswith(":midjourney:task-0"))
    fp = re.match(r"mjgate:task:([0-9a-f]{32}):midjourney:task-0$", key0).group(1)
    rig.stop(gw)
    blob = os.path.join(rig.work, "blob")
    with open(blob, "wb") as f:
        rnd = random.Random(5)
        f.write(rnd.randbytes(a.redis_mib * MiB))

    def plant():
        for i in range(a.redis_keys):
            redis_cli(port, "-x", "SET", f"mjgate:task:{fp}:midjourney:task-{i}", stdin=blob)
        return [int(redis_cli(port, "STRLEN", f"mjgate:task:{fp}:midjourney:task-{i}") or 0)
                for i in range(a.redis_keys)]

    rows = []
    details = []
    for mode in ("one after another", "all at once"):
        sizes = plant()
        gw = rig.gateway(toml)
        pid = gw.gw_pid
        time.sleep(1)
        before = rss(pid)
        sampler = Sampler(pid, period=0.01)
        sampler.start()
        answers = {}

        def fetch(i):
            t = time.time()
            st, body = http_get(rig.gw_port, f"/mj/task/task-{i}/fetch", auth, timeout=60)
            answers[i] = (st, len(body), time.time() - t, f'"id":"task-{i}"' in body.decode(errors="replace"))

        t0 = time.time()
        if mode == "one after another":
            for i in range(a.redis_keys):
                fetch(i)
        else:
            ths = [threading.Thread(target=fetch, args=(i,)) for i in range(a.redis_keys)]
            for th in ths:
                th.start()
            for th in ths:
                th.join(90)
        took = time.time() - t0
        time.sleep(1)
        rss_end = rss(pid)
        time.sleep(4)
        after = rss(pid)
        sampler.stop()
        peak = max(sampler.peak, hwm(pid))
        ms = metrics(rig.gw_port)
        left = [int(redis_cli(port, "STRLEN", f"mjgate:task:{fp}:midjourney:task-{i}") or 0)
                for i in range(a.redis_keys)]
        rows.append([mode, f"{a.redis_keys} × {a.redis_mib} MiB", mb(before), mb(peak), mb(rss_end), mb(after),
                     ", ".join(f"{v[0]}" for _, v in sorted(answers.items())),
                     f"{took:.2f} s (slowest {max(v[2] for v in answers.values()):.2f} s)",
                     f"{m(ms, 'mjgate_shared_cache_errors_total{kind=' + chr(34) + 'corrupt' + chr(34) + '}'):.0f}",
                     json.dumps(labelled(ms, "mjgate_shared_cache_errors_total"))])
        details.append(f"- {mode}: answers (status, bytes, seconds, own id) {answers}; planted sizes {sizes}; "
                       f"sizes after the fetches {left}; lookups {labelled(ms, 'mjgate_shared_cache_lookups_total')}; "
                       f"writes {labelled(ms, 'mjgate_shared_cache_writes_total')}; up {m(ms, 'mjgate_shared_cache_up'):.0f}; "
                       f"state changes {labelled(ms, 'mjgate_shared_cache_state_changes_total')}; "
                       f"upstream calls (simulator) {json.loads(http_get(rig.sim_port, '/_sim/stats')[1]).get('fetches')}")
        rig.stop(gw)
    stderr = rig.gateway_stderr()
    rig.stop(sim)
    rig.stop(redis)
    print_table(f"5. Oversized Redis values (key mjgate:task:{{fp}}:midjourney:task-N, fp {fp})",
                ["fetches", "values", "RSS before (MB)", "RSS peak (MB)", "RSS 1 s after (MB)", "RSS 5 s after (MB)",
                 "answers", "time", "errors{kind=\"corrupt\"}", "shared_cache_errors_total"], rows)
    print()
    for d in details:
        print(d)
    print(f"  first fetch before planting: {st}; keys then: {keys}")
    print(f"  gateway stderr (all runs): {stderr}")


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=["all"],
                   help="hooks large streams h2 bodies redis, or all (h2 runs after streams)")
    p.add_argument("--bin", default=os.environ.get("MJGATE", "target/release/mjgate"))
    p.add_argument("--ports", type=int, nargs=4, default=[19900, 19901, 19902, 19903],
                   metavar=("SIM", "GW", "RECV", "REDIS"))
    p.add_argument("--port", type=int, help="receiver: its port")
    p.add_argument("--status", type=int, default=200, help="receiver: the status it answers")
    p.add_argument("--submit-conns", type=int, default=64)
    p.add_argument("--hooks", type=int, default=5000)
    p.add_argument("--hooks-distinct", type=int, default=10000)
    p.add_argument("--hooks-watch", type=int, default=80, help="seconds from the first submit")
    p.add_argument("--large", type=int, default=1500)
    p.add_argument("--large-prompt", type=int, default=65000)
    p.add_argument("--large-watch", type=int, default=90)
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--streams-watch", type=int, default=60)
    p.add_argument("--h2-conns", type=int, default=5)
    p.add_argument("--h2-streams", type=int, default=200)
    p.add_argument("--h2-window", type=int, default=0)
    p.add_argument("--h2-watch", type=int, default=40)
    p.add_argument("--bodies", type=int, default=2000)
    p.add_argument("--trickle", type=int, default=30)
    p.add_argument("--redis-keys", type=int, default=8)
    p.add_argument("--redis-mib", type=int, default=60)
    a = p.parse_args()
    if a.scenarios == ["receiver"]:
        receiver_main(a.port, a.status)
        return
    if "all" in a.scenarios:
        a.scenarios = ["hooks", "large", "streams", "h2", "bodies", "redis"]
    a.bin = os.path.abspath(a.bin)
    for port in a.ports:
        try:
            socket.create_connection((HOST, port), 0.3).close()
            sys.exit(f"{HOST}:{port} is taken; pass --ports SIM GW RECV REDIS")
        except OSError:
            pass
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rig = Rig(a)
    log(f"work dir {rig.work}")
    t = time.time()
    try:
        for name in a.scenarios:
            if name == "h2" and "streams" in a.scenarios:
                continue  # run inside streams, with its simulator
            if name == "h2":
                sim = rig.simulator("--tasks", "50", "--credential", "Bearer sk-x", "--answer-bytes", "102400",
                                    "--task-duration", "100s")
                run_h2(rig)()
                rig.stop(sim)
                continue
            {"hooks": run_hooks, "large": run_large, "streams": run_streams, "bodies": run_bodies,
             "redis": run_redis}[name](rig)
    finally:
        rig.procs.stop_all()
        log(f"done in {time.time() - t:.0f}s; logs in {rig.work}")


if __name__ == "__main__":
    main()
