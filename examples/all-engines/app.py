"""The all-engines example's app: answers /healthz, and / with what each of its five services says when it
connects, using only Python's standard library.

kip gives it every address and credential through the environment (DATABASE_URL, REDIS_URL, MYSQL_URL, NATS_URL
with NATS_TOKEN, and the AWS_* variables an S3 SDK reads). It never prints their values: they hold passwords. Where a service's
hello is one line it logs in (Valkey: AUTH and PING; NATS: CONNECT with the token and PING); elsewhere it reads
the server's greeting (MariaDB's handshake, PostgreSQL's answer to an SSL request, S3's answer to an unsigned
request), which shows the server is up and listening where kip said, not that the credentials work. A real app
would use each engine's client library.
"""

import json
import os
import socket
import struct
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def connect(url, default_port):
    """A socket to the server a URL names: its unix socket when it has one, else its TCP host and port."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    path = None
    if parts.scheme == "unix":
        path = urllib.parse.unquote(parts.path)
    elif "socket" in query:
        path = query["socket"][0]
    elif query.get("host", [""])[0].startswith("/"):
        path = f"{query['host'][0]}/.s.PGSQL.{query.get('port', ['5432'])[0]}"
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(path)
        return sock, parts, query
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2)
    return sock, parts, query


def postgres(url):
    sock, _, _ = connect(url, 5432)
    with sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest: the server answers one byte, S or N
        return f"PostgreSQL answered {sock.recv(1)!r} to an SSL request"


def valkey(url):
    sock, parts, query = connect(url, 6379)
    user = query.get("user", [urllib.parse.unquote(parts.username or "default")])[0]
    password = query.get("pass", [urllib.parse.unquote(parts.password or "")])[0]
    with sock:
        command = [b"AUTH", user.encode(), password.encode()]
        request = b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command)
        sock.sendall(request + b"PING\r\n")
        reply = sock.recv(256).decode()
        return "logged in, PING answered PONG" if "+PONG" in reply else f"refused: {reply.strip()}"


def mariadb(url):
    sock, _, _ = connect(url, 3306)
    with sock:
        packet = sock.recv(1024)
        version = packet[5 : packet.index(b"\0", 5)].decode()  # header (4), protocol version (1), version
        return f"MariaDB {version.removeprefix('5.5.5-')} greeted"  # the prefix is for old replication clients


def nats(url):
    sock, _, _ = connect(url, 4222)
    with sock:
        info = sock.recv(4096).decode()
        token = os.environ.get("NATS_TOKEN", "")
        connect_options = json.dumps({"auth_token": token, "verbose": False, "pedantic": False})
        sock.sendall(f"CONNECT {connect_options}\r\nPING\r\n".encode())
        reply = sock.recv(256).decode()
        server = json.loads(info.split(" ", 1)[1]).get("version", "?")
        return f"NATS {server}: PING answered PONG" if "PONG" in reply else f"refused: {reply.strip()}"


def s3(endpoint):
    try:
        urllib.request.urlopen(endpoint, timeout=2)
        return "answered an unsigned request (it should not have)"
    except urllib.error.HTTPError as error:
        return f"S3 refused an unsigned request with {error.code}, as it should"


CHECKS = {
    "postgres": lambda: postgres(os.environ["DATABASE_URL"]),
    "valkey": lambda: valkey(os.environ["REDIS_URL"]),
    "mariadb": lambda: mariadb(os.environ["MYSQL_URL"]),
    "nats": lambda: nats(os.environ["NATS_URL"]),
    "s3": lambda: s3(os.environ["AWS_ENDPOINT_URL_S3"]),
}


def report():
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as error:  # noqa: BLE001 - an example reports every failure as text
            results[name] = f"unreachable: {type(error).__name__}: {error}"
    return results


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
        elif self.path == "/":
            body = json.dumps(report(), indent=2).encode() + b"\n"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print("app:", format % args, flush=True)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"app: listening on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
