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
names the export and quotes the body: a figure is never printed for a failed run."""
import http.client
import json
import os
import sys
import time
import urllib.parse


class Api:
    def __init__(self, base):
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


def create(api, prefix, n, size):
    t0 = time.monotonic()
    for i in range(int(n)):
        name = f"{prefix}{i}"
        status, text = api.request("PUT", f"/api/exports/{name}", {"size": size})
        if status // 100 != 2:
            print(f"PUT {name}: HTTP {status}: {text.strip()}", file=sys.stderr)
            return 1
        try:
            dev = json.loads(text).get("device", "?")
        except ValueError:
            dev = "?"
        print(f"{name} {dev}", flush=True)
    print(f"# elapsed {time.monotonic() - t0:.3f}")
    return 0


def each_export(api, prefix, n, method, suffix, timeout_env, timeout_default):
    """One request per export, in order, no retry (a request that timed out may
    still be running in the daemon); stops at the first non-2xx answer."""
    t0 = time.monotonic()
    timeout = float(os.environ.get(timeout_env, timeout_default))
    for i in range(int(n)):
        path = f"/api/exports/{prefix}{i}{suffix}"
        status, text = api.request(method, path, timeout=timeout, tries=1)
        if status // 100 != 2:
            print(f"{method} {path}: HTTP {status}: {text.strip()}", file=sys.stderr)
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
