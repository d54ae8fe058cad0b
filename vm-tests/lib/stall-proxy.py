#!/usr/bin/env python3
"""stall-proxy: a TCP proxy between one daemon and its object store, for the
`takeover` VM phase (vm-tests/phases/takeover.sh). Standard library only.

    stall-proxy.py --listen PORT --upstream PORT --control PORT [--log FILE]

Modes (switched on the control port, one text line per connection):
  forward        bytes flow both ways (connections to the upstream are opened as needed)
  stall          a network partition that delivers late: connections are still
                 accepted, every byte from either side is kept, nothing is passed on.
                 When the mode goes back to forward, the kept bytes are delivered in
                 order, even for clients that gave up meanwhile: their requests reach
                 the store LATE (a client gone is answered into the void, the response
                 status is logged).
  drop           connections are reset (existing ones too, kept bytes are thrown away)
  arm REGEX      forward, until a request whose request line ("PUT /path HTTP/1.1")
                 matches REGEX starts: from that request on the mode is stall, so that
                 exactly that request is in flight when the partition begins.

Control commands (answer: one line):
  mode forward|stall|drop   -> ok MODE
  arm REGEX                 -> ok arm
  status                    -> JSON: mode, trigger (request line) and trigger_ms,
                               open/held connection counts, late deliveries
                               [{"conn", "request", "status", "client_gone"}],
                               request counts per mode
Every request line and response status line seen is logged with a timestamp.

HTTP is only looked at to name requests: a chunk from the client that starts with a
method token starts a request (glidefs' S3 client sends one request per connection,
and HTTP/1.1 clients never pipeline, so a request starts a fresh read).
"""

import argparse
import json
import re
import select
import socket
import struct
import sys
import threading
import time

METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def now_ms():
    return int(time.time() * 1000)


class Proxy:
    def __init__(self, upstream_port, log):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.mode = "forward"
        self.arm_re = None
        self.trigger = None
        self.trigger_ms = None
        self.next_id = 0
        self.open = {}  # conn id -> Conn
        self.late = []
        self.counts = {}
        self.logf = log

    def log(self, msg):
        line = "%s %d %s\n" % (time.strftime("%H:%M:%S"), now_ms(), msg)
        with self.lock:
            self.logf.write(line)
            self.logf.flush()

    def set_mode(self, mode, arm_re=None):
        with self.lock:
            self.mode = mode
            self.arm_re = arm_re
        self.log("MODE %s%s" % (mode, " " + arm_re.pattern if arm_re else ""))

    def flowing(self):
        return self.mode in ("forward", "arm")

    def note_request(self, conn, line):
        """A request starts on conn; in arm mode a match turns the proxy to stall
        before any of its bytes are passed on. Returns the mode for its bytes."""
        with self.lock:
            if self.mode == "arm" and self.arm_re and self.arm_re.search(line):
                self.mode = "stall"
                self.arm_re = None
                self.trigger = line
                self.trigger_ms = now_ms()
                triggered = True
            else:
                triggered = False
            mode = self.mode
            self.counts[mode] = self.counts.get(mode, 0) + 1
        if triggered:
            self.log("TRIGGER conn %d: %s -> mode stall" % (conn.id, line))
        self.log("REQ conn %d [%s] %s" % (conn.id, mode, line))
        return mode

    def status(self):
        with self.lock:
            held = sum(1 for c in self.open.values() if c.held_pending())
            return {
                "mode": self.mode,
                "trigger": self.trigger,
                "trigger_ms": self.trigger_ms,
                "open_conns": len(self.open),
                "held_conns": held,
                "late": list(self.late),
                "requests": dict(self.counts),
            }


class Conn:
    def __init__(self, proxy, client):
        self.p = proxy
        self.client = client
        with proxy.lock:
            self.id = proxy.next_id
            proxy.next_id += 1
            proxy.open[self.id] = self
        self.up = None
        self.client_open = True
        self.up_open = False
        self.up_shut = False
        self.to_up = bytearray()  # client bytes not yet passed on
        self.to_client = bytearray()  # upstream bytes not yet passed on
        self.was_held = False  # some request bytes were kept during a stall
        self.request = None
        self.status = None
        self.late_recorded = False

    def held_pending(self):
        return bool(self.to_up) or (bool(self.to_client) and self.client_open)

    def close(self, reset=False):
        for s in (self.client, self.up):
            if s is None:
                continue
            try:
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass
        with self.p.lock:
            self.p.open.pop(self.id, None)

    def record_late(self):
        if self.was_held and not self.late_recorded and self.status is not None:
            self.late_recorded = True
            entry = {
                "conn": self.id,
                "request": self.request,
                "status": self.status,
                "client_gone": not self.client_open,
                "ms": now_ms(),
            }
            with self.p.lock:
                self.p.late.append(entry)
            self.p.log("LATE conn %d delivered: %s -> %s%s" % (
                self.id, self.request, self.status,
                " (client gone)" if not self.client_open else ""))

    def connect_up(self):
        try:
            self.up = socket.create_connection(("127.0.0.1", self.p.upstream_port), timeout=10)
            self.up.settimeout(None)
            self.up_open = True
            return True
        except OSError as e:
            self.p.log("conn %d: upstream connect failed: %s" % (self.id, e))
            return False

    def run(self):
        try:
            self._run()
        except Exception as e:  # a broken connection ends this connection only
            self.p.log("conn %d: error %r" % (self.id, e))
        finally:
            self.close()

    def _run(self):
        gone_since = None
        while True:
            mode = self.p.mode
            if mode == "drop":
                self.p.log("conn %d: reset (drop)%s" % (
                    self.id, ", %d kept bytes thrown away" % len(self.to_up) if self.to_up else ""))
                self.close(reset=True)
                return
            if self.p.flowing():
                if self.up is None and (self.client_open or self.to_up):
                    if not self.connect_up():
                        return
                if self.to_up and self.up_open:
                    self.up.sendall(bytes(self.to_up))
                    self.to_up.clear()
                if not self.client_open and self.up_open and not self.up_shut and not self.to_up:
                    self.up.shutdown(socket.SHUT_WR)
                    self.up_shut = True
                if self.to_client and self.client_open:
                    try:
                        self.client.sendall(bytes(self.to_client))
                    except OSError:
                        self.client_open = False
                    self.to_client.clear()
            if self.up is not None and not self.up_open and not self.to_client:
                return
            rlist = []
            if self.client_open:
                rlist.append(self.client)
            if self.up_open:
                rlist.append(self.up)
            if not rlist:
                return
            if not self.client_open and not self.to_up and self.up is None:
                return
            # A client gone and its request delivered: wait for the answer a while.
            if not self.client_open and self.up_shut:
                gone_since = gone_since or time.time()
                if time.time() - gone_since > 60:
                    return
            r, _, _ = select.select(rlist, [], [], 0.1)
            for s in r:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if s is self.client:
                    if not data:
                        self.client_open = False
                        self.p.log("conn %d: client closed%s" % (
                            self.id, " (%d bytes kept for late delivery)" % len(self.to_up) if self.to_up else ""))
                        continue
                    mode = self.p.mode
                    if data.startswith(METHODS):
                        line = data.split(b"\r\n", 1)[0].decode("latin-1")
                        if self.request is None:
                            self.request = line
                        mode = self.p.note_request(self, line)
                    if mode in ("forward", "arm") and self.up_open and not self.to_up:
                        self.up.sendall(data)
                    else:
                        self.to_up += data
                        if mode == "stall":
                            self.was_held = True
                else:
                    if not data:
                        self.up_open = False
                        if self.to_client and self.client_open and self.p.flowing():
                            self.client.sendall(bytes(self.to_client))
                            self.to_client.clear()
                        self.record_late()
                        if not self.to_client:
                            return
                        continue
                    if data.startswith(b"HTTP/1."):
                        self.status = data.split(b"\r\n", 1)[0].decode("latin-1")
                        self.p.log("RESP conn %d: %s -> %s" % (self.id, self.request, self.status))
                        self.record_late()
                    if not self.client_open:
                        continue
                    if self.p.flowing() and not self.to_client:
                        try:
                            self.client.sendall(data)
                        except OSError:
                            self.client_open = False
                    else:
                        self.to_client += data


def serve_control(proxy, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=control_conn, args=(proxy, c), daemon=True).start()


def control_conn(proxy, c):
    try:
        f = c.makefile("rwb")
        line = f.readline().decode().strip()
        cmd, _, arg = line.partition(" ")
        if cmd == "mode" and arg in ("forward", "stall", "drop"):
            proxy.set_mode(arg)
            reply = "ok " + arg
        elif cmd == "arm" and arg:
            try:
                proxy.set_mode("arm", re.compile(arg))
                reply = "ok arm"
            except re.error as e:
                reply = "error bad regex: %s" % e
        elif cmd == "status":
            reply = json.dumps(proxy.status())
        else:
            reply = "error unknown command %r (mode forward|stall|drop, arm REGEX, status)" % line
        f.write((reply + "\n").encode())
        f.flush()
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--control", type=int, required=True)
    ap.add_argument("--log", default="-")
    a = ap.parse_args()
    log = sys.stdout if a.log == "-" else open(a.log, "a", buffering=1)
    proxy = Proxy(a.upstream, log)
    threading.Thread(target=serve_control, args=(proxy, a.control), daemon=True).start()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", a.listen))
    srv.listen(128)
    proxy.log("listening on 127.0.0.1:%d -> 127.0.0.1:%d, control on %d" % (a.listen, a.upstream, a.control))
    while True:
        c, _ = srv.accept()
        if proxy.mode == "drop":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            proxy.log("new connection reset (drop)")
            continue
        conn = Conn(proxy, c)
        threading.Thread(target=conn.run, daemon=True).start()


if __name__ == "__main__":
    main()
