"""The quickstart's web server: answers /healthz, and / with the products the migration created (read with psql).

It gets its database and cache from kip through the environment (DATABASE_URL, CACHE_URL, PORT) and never prints
their values: they hold passwords.
"""

import json
import os
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def products():
    out = subprocess.run(
        ["psql", os.environ["DATABASE_URL"], "-At", "-F", "\t", "-c", "SELECT name, price FROM products ORDER BY id"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [{"name": name, "price": price} for name, price in (line.split("\t") for line in out.splitlines())]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
        elif self.path == "/":
            body = json.dumps({"products": products(), "cache": "CACHE_URL" in os.environ}).encode() + b"\n"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print("web:", format % args, flush=True)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"web: listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
