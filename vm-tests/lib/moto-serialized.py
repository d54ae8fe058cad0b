#!/usr/bin/env python3
"""moto's S3 server on 127.0.0.1:PORT with every request under one lock, so that its
conditional writes (If-Match / If-None-Match) are atomic: the same wrapper as the host
tests' (tests/common/servers.rs, MOTO_SERIALIZED). Run it with the Python of moto's
venv: `$GLIDEFS_TOOLS/venv/bin/python moto-serialized.py PORT`."""
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def serialized(environ, start_response):
    with lock:
        return list(app(environ, start_response))


run_simple("127.0.0.1", int(sys.argv[1]), serialized, threaded=True, request_handler=MotoRequestHandler)
