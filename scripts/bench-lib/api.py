#!/usr/bin/env python3
"""Talks to the glidefs daemon's HTTP API for scripts/bench, in one process so that
timing N creations measures the daemon rather than N curl start-ups.

  api.py BASE wait-ready SECONDS      exit 0 once GET /health/ready is 200
                                      (GET /api/exports when /health/ready is 404)
  api.py BASE create PREFIX N SIZE    PUT /api/exports/PREFIX<i> {"size": SIZE};
                                      prints "name device" per export, then
                                      "# elapsed SECONDS"
  api.py BASE delete PREFIX N         DELETE each; prints "# elapsed SECONDS"
  api.py BASE drain PREFIX N          POST /api/exports/PREFIX<i>/drain for each (returns
                                      once everything written so far is in the store);
                                      prints "# elapsed SECONDS"

BASE is like http://127.0.0.1:8080. Any non-2xx answer is an error (exit 1) that
names the export and quotes the body: a figure is never printed for a failed run.
BENCH_API_JOBS (default 1): requests of create, delete and drain in flight at once,
each on its own connection, as an operator's tool creating many exports would; with
1 the figure is the latency of one request after another."""
import concurrent.futures
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


class Api:
    def __init__(self, base):
        self.base = base
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    def request(self, method, path, body=None, timeout=120, tries=2):
        for attempt in range(tries):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                headers = {"content-type": "application/json"} if body is not None else {}
                data = json.dumps(body) if body is not None else None
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, text
            except (ConnectionError, http.client.HTTPException, OSError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == tries - 1:
                    raise
        raise RuntimeError("unreachable")


def wait_ready(api, seconds):
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            status, _ = api.request("GET", "/health/ready", timeout=5)
            if status == 404:
                status, _ = api.request("GET", "/api/exports", timeout=5)
            if status == 200:
                return 0
        except OSError:
            pass
        time.sleep(0.05)
    print(f"daemon not ready after {seconds}s", file=sys.stderr)
    return 1


def jobs():
    try:
        j = int(os.environ.get("BENCH_API_JOBS", "1"))
    except ValueError:
        sys.exit(f"BENCH_API_JOBS={os.environ['BENCH_API_JOBS']!r} is not a number")
    if j < 1:
        sys.exit(f"BENCH_API_JOBS={j} must be at least 1")
    return j


def run_all(api, n, one):
    """one(api, i) -> (ok, text) for i in 0..n, BENCH_API_JOBS at a time (each thread
    on its own connection; with one job, in order on `api`). Stops starting new
    requests after the first failure. Returns the texts in index order, or None after
    printing the first failure (by index) to stderr."""
    n, j = int(n), jobs()
    if j == 1:
        out = []
        for i in range(n):
            ok, text = one(api, i)
            if not ok:
                print(text, file=sys.stderr)
                return None
            out.append(text)
        return out
    local = threading.local()
    failed = threading.Event()

    def task(i):
        if failed.is_set():
            return False, None
        if not hasattr(local, "api"):
            local.api = Api(api.base)
        ok, text = one(local.api, i)
        if not ok:
            failed.set()
        return ok, text

    with concurrent.futures.ThreadPoolExecutor(max_workers=j) as pool:
        results = list(pool.map(task, range(n)))
    for ok, text in results:
        if not ok and text is not None:
            print(text, file=sys.stderr)
            return None
    return [text for _, text in results]


def create(api, prefix, n, size):
    def one(a, i):
        name = f"{prefix}{i}"
        status, text = a.request("PUT", f"/api/exports/{name}", {"size": size})
        if status // 100 != 2:
            return False, f"PUT {name}: HTTP {status}: {text.strip()}"
        try:
            dev = json.loads(text).get("device", "?")
        except ValueError:
            dev = "?"
        return True, f"{name} {dev}"

    t0 = time.monotonic()
    lines = run_all(api, n, one)
    if lines is None:
        return 1
    elapsed = time.monotonic() - t0
    print("\n".join(lines), flush=True)
    print(f"# elapsed {elapsed:.3f}")
    return 0


def each_export(api, prefix, n, method, suffix, timeout_env, timeout_default):
    """One request per export, no retry (a request that timed out may still be
    running in the daemon); stops at the first non-2xx answer."""
    timeout = float(os.environ.get(timeout_env, timeout_default))

    def one(a, i):
        path = f"/api/exports/{prefix}{i}{suffix}"
        t0 = time.monotonic()
        try:
            status, text = a.request(method, path, timeout=timeout, tries=1)
        except OSError as e:
            # Name the request: which export hung is what a profile starts from.
            return False, f"{method} {path}: {e} after {time.monotonic() - t0:.1f} s"
        if status // 100 != 2:
            return False, f"{method} {path}: HTTP {status}: {text.strip()}"
        return True, ""

    t0 = time.monotonic()
    if run_all(api, n, one) is None:
        return 1
    print(f"# elapsed {time.monotonic() - t0:.3f}")
    return 0


def delete(api, prefix, n):
    return each_export(api, prefix, n, "DELETE", "", "BENCH_DELETE_TIMEOUT", "60")


def drain(api, prefix, n):
    return each_export(api, prefix, n, "POST", "/drain", "BENCH_DRAIN_TIMEOUT", "900")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    api = Api(argv[1])
    cmd, args = argv[2], argv[3:]
    try:
        if cmd == "wait-ready" and len(args) == 1:
            return wait_ready(api, *args)
        if cmd == "create" and len(args) == 3:
            return create(api, *args)
        if cmd == "delete" and len(args) == 2:
            return delete(api, *args)
        if cmd == "drain" and len(args) == 2:
            return drain(api, *args)
    except OSError as e:
        print(f"api {cmd}: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
