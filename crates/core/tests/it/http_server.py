"""A small binary cache server for the HTTP store tests.

GET and HEAD serve files from --dir; PUT writes them there atomically
(temporary file, then rename), as a writable cache would. It listens on
127.0.0.1 on a free port, which it writes to --port-file once it listens.

Options to check the client:
  --log FILE           append "METHOD PATH CONTENT-TYPE" per request
  --token T            require "Authorization: Bearer T"
  --basic USER:PASS    require basic authentication with these credentials
  --fail N             answer the first N requests with --fail-status
  --fail-status CODE   (default 503), with "Retry-After: --retry-after"
  --retry-after S      seconds (default: no header)
  --early FILE         append "METHOD PATH" per request that comes before
                       the Retry-After of the last failure has passed
  --drop N             close the connection without an answer, N times
                       (after the --fail ones)
  --put-status CODE    answer every PUT with this status, writing nothing
  --tls-cert FILE      speak HTTPS, with this certificate chain (PEM)
  --tls-key FILE       and this key (PEM)
  --connections FILE   append a line per connection accepted, whether its
                       TLS handshake succeeds or not
"""

import argparse
import base64
import http.server
import os
import ssl
import sys
import threading
import time

args = None
lock = threading.Lock()
counts = {"fail": 0, "drop": 0}
# When the client may ask again, after a failure answered with Retry-After
# (time.monotonic()).
retry_not_before = [0.0]


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=args.dir, **kw)

    def log_message(self, format, *a):
        pass

    def record(self):
        if args.early and time.monotonic() < retry_not_before[0]:
            with lock, open(args.early, "a") as f:
                f.write(f"{self.command} {self.path}\n")
        if args.log:
            with lock, open(args.log, "a") as f:
                ct = self.headers.get("Content-Type", "-")
                f.write(f"{self.command} {self.path} {ct}\n")

    def read_body(self):
        length = int(self.headers.get("Content-Length", "0"))
        remaining = length
        chunks = []
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def answer(self, code, extra=()):
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def intercept(self):
        """Answers the request if a failure or auth check says so."""
        self.record()
        body = self.read_body() if self.command == "PUT" else b""
        with lock:
            if counts["fail"] < args.fail:
                counts["fail"] += 1
                extra = []
                if args.retry_after is not None:
                    extra.append(("Retry-After", str(args.retry_after)))
                    retry_not_before[0] = time.monotonic() + args.retry_after
                self.answer(args.fail_status, extra)
                return True, body
            if counts["drop"] < args.drop:
                counts["drop"] += 1
                self.close_connection = True
                return True, body
        auth = self.headers.get("Authorization", "")
        if args.token is not None and auth != f"Bearer {args.token}":
            self.answer(401)
            return True, body
        if args.basic is not None:
            want = "Basic " + base64.b64encode(args.basic.encode()).decode()
            if auth != want:
                self.answer(401, [("WWW-Authenticate", 'Basic realm="cache"')])
                return True, body
        return False, body

    def do_GET(self):
        done, _ = self.intercept()
        if not done:
            super().do_GET()

    def do_HEAD(self):
        done, _ = self.intercept()
        if not done:
            super().do_HEAD()

    def do_PUT(self):
        done, body = self.intercept()
        if done:
            return
        if args.put_status is not None:
            self.answer(args.put_status)
            return
        rel = self.path.split("?", 1)[0].lstrip("/")
        if ".." in rel.split("/"):
            self.answer(400)
            return
        dest = os.path.join(args.dir, rel)
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        tmp = f"{dest}.tmp.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, dest)
        self.answer(201)


class Server(http.server.ThreadingHTTPServer):
    def get_request(self):
        # With TLS, accepting includes the handshake, which may fail.
        outcome = "accepted"
        try:
            return super().get_request()
        except ssl.SSLError as e:
            outcome = e.reason or "tls-error"
            raise
        except OSError:
            outcome = "closed"
            raise
        finally:
            if args.connections:
                with lock, open(args.connections, "a") as f:
                    f.write(f"{outcome}\n")


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log")
    p.add_argument("--token")
    p.add_argument("--basic")
    p.add_argument("--fail", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--retry-after", type=int)
    p.add_argument("--early")
    p.add_argument("--drop", type=int, default=0)
    p.add_argument("--put-status", type=int)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--connections")
    args = p.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
