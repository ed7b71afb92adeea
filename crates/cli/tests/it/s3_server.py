"""The server harness of the S3 tests.

The integration tests of `s3://` stores run this script with the Python of
the test environment, which has `moto[server]` (and so boto3) installed. It
only ever listens on or connects to 127.0.0.1.

Subcommands:

serve
    An S3 server (moto) on a free port, with request signatures checked:
    requests must be signed (SigV4) with the access key written to the
    credentials file, anything else gets 403. The buckets given are created
    before the port file is written.

proxy
    An HTTP/1.1 proxy in front of the server, on a free port. It forwards
    requests and responses as they come, without holding whole bodies in
    memory, can write every request down, and can answer chosen requests
    itself with 503 SlowDown. Killing
    it drops every connection through it while the server keeps its state,
    which is how the tests stop "the server" in the middle of an upload.

uploads, keys, put, get, begin, abort
    boto3 helpers for the tests: list the unfinished multipart uploads or the
    keys of a bucket as JSON, upload or download one object, begin a
    multipart upload (one small part sent, never completed; its id printed as
    JSON) or abort one.

`serve` and `proxy` write their port (decimal, newline) to the port file
last, atomically, once they accept connections; then they run until killed.
They print nothing per request.
"""

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
REGION = "us-east-1"

# The IAM user that the credentials belong to.
USER_NAME = "s3-tests"

# Stored objects (and parts) larger than this live in temporary files rather
# than in memory. moto reads the variable when it stores an object.
KEY_BUFFER_SIZE = 1 << 20

# How much the proxy moves at a time.
COPY_SIZE = 1 << 20

# Limits on a message head read by the proxy.
MAX_LINE = 64 * 1024
MAX_HEADERS = 256

# How long the proxy waits, once a response is over, for the rest of the
# request body to be forwarded before it gives up on the connection.
PUMP_GRACE = 5.0

SLOW_DOWN_BODY = (
    b"<Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- serve -------------------------------------------------------------------


def serve(args):
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(KEY_BUFFER_SIZE))
    if args.tmp_dir:
        tempfile.tempdir = args.tmp_dir

    # No request log; errors still reach stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.s3.models import s3_backends
    from werkzeug.serving import make_server

    # Set up the user and the buckets directly in the backends, so that no
    # request goes unchecked: from the first request on, every one must be
    # signed by a known access key whose user may do what it asks.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(region_name=REGION, user_name=USER_NAME)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(USER_NAME, "all-of-s3", json.dumps(policy))
    key = iam.create_access_key(USER_NAME)

    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in args.bucket:
        s3.create_bucket(bucket, REGION)

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        HOST, 0, app, threaded=True, request_handler=MotoRequestHandler
    )
    port = server.server_address[1]

    creds = {
        "access_key_id": key.access_key_id,
        "secret_access_key": key.secret_access_key,
    }
    write_atomically(args.creds_file, json.dumps(creds) + "\n")
    # The socket listens already: connections wait until serve_forever
    # accepts them.
    write_atomically(args.port_file, f"{port}\n")
    server.serve_forever()


# --- proxy -------------------------------------------------------------------


class ProtocolError(Exception):
    pass


class Head:
    """The head of an HTTP/1.x message."""

    def __init__(self, start, headers):
        self.start = start  # the start line, without line end
        self.headers = headers  # [(name, value)] in order, as sent

    def get_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def tokens(self, name):
        """The comma-separated, lower-cased tokens of all `name` headers."""
        out = []
        for value in self.get_all(name):
            out.extend(t.strip().lower() for t in value.split(",") if t.strip())
        return out

    def framing(self):
        """('chunked',), ('length', n) or None when there is no such header."""
        codings = self.tokens("transfer-encoding")
        if codings:
            if codings[-1] != "chunked":
                raise ProtocolError("unsupported transfer coding")
            return ("chunked",)
        lengths = {v.strip() for v in self.get_all("content-length")}
        if not lengths:
            return None
        if len(lengths) != 1:
            raise ProtocolError("conflicting Content-Length")
        (length,) = lengths
        if not length.isdigit():
            raise ProtocolError("bad Content-Length")
        return ("length", int(length))

    def encode(self, drop=(), add=()):
        drop = {d.lower() for d in drop}
        lines = [self.start]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n.lower() not in drop)
        lines.extend(f"{n}: {v}" for n, v in add)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(rfile):
    """Read a message head; None on a clean end of stream before it."""
    start = None
    headers = []
    total = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        total += len(line)
        if not line:
            if start is None and total == 0:
                return None
            raise ProtocolError("end of stream in a message head")
        if len(line) > MAX_LINE or total > 16 * MAX_LINE:
            raise ProtocolError("message head too long")
        if not line.endswith(b"\n"):
            raise ProtocolError("end of stream in a message head")
        text = line.decode("latin-1").rstrip("\r\n")
        if start is None:
            if text == "":
                continue  # stray line ends before a message are allowed
            start = text
            continue
        if text == "":
            return Head(start, headers)
        if text[0] in " \t":
            raise ProtocolError("obsolete header folding")
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError("bad header line")
        headers.append((name, value.strip()))
        if len(headers) > MAX_HEADERS:
            raise ProtocolError("too many headers")


class RateLimit:
    """A limit on the bytes per second of request bodies, over all
    connections (None: no limit), so that tests can catch an upload in the
    middle."""

    def __init__(self):
        self.rate = None
        self.lock = threading.Lock()
        self.next = 0.0

    def spend(self, n):
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            wait = self.next - now
        time.sleep(wait)


RATE = RateLimit()


def copy_exact(rfile, sock, n):
    """Copy `n` bytes from `rfile` to `sock` (None: discard them)."""
    while n > 0:
        data = rfile.read1(min(n, COPY_SIZE))
        if not data:
            raise ProtocolError("end of stream in a body")
        if sock is not None:
            RATE.spend(len(data))
            sock.sendall(data)
        n -= len(data)


def copy_line(rfile, sock):
    line = rfile.readline(MAX_LINE + 1)
    if not line.endswith(b"\n") or len(line) > MAX_LINE:
        raise ProtocolError("bad line in a chunked body")
    if sock is not None:
        sock.sendall(line)
    return line


def copy_chunked(rfile, sock):
    """Copy a chunked body as it is, trailers included."""
    while True:
        line = copy_line(rfile, sock)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        if size < 0:
            raise ProtocolError("bad chunk size")
        if size == 0:
            break
        copy_exact(rfile, sock, size)
        if copy_line(rfile, sock).strip():
            raise ProtocolError("chunk not followed by a line end")
    while copy_line(rfile, sock).strip():
        pass


def copy_body(rfile, sock, framing):
    if framing is None:
        return
    if framing[0] == "chunked":
        copy_chunked(rfile, sock)
    else:
        copy_exact(rfile, sock, framing[1])


def copy_to_end(rfile, sock):
    while True:
        data = rfile.read1(COPY_SIZE)
        if not data:
            return
        sock.sendall(data)


def shut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Throttle:
    """Which requests the proxy answers with 503 SlowDown itself."""

    def __init__(self, every, first, log_path, requests_path):
        self.every = every
        self.first = first
        self.log_path = log_path
        self.requests_path = requests_path
        self.count = 0
        self.lock = threading.Lock()

    def hit(self, method, target):
        with self.lock:
            self.count += 1
            n = self.count
            if self.requests_path:
                with open(self.requests_path, "a") as f:
                    f.write(f"{method} {target}\n")
            hit = n <= self.first or (self.every > 0 and n % self.every == 0)
            if hit and self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(f"{method} {target}\n")
            return hit


class Proxy:
    def __init__(self, upstream_port, throttle):
        self.upstream = (HOST, upstream_port)
        self.throttle = throttle

    def handle(self, client):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = client.makefile("rb", buffering=COPY_SIZE)
        try:
            while True:
                head = read_head(rfile)
                if head is None:
                    break
                if not self.exchange(client, rfile, head):
                    break
        except (OSError, ProtocolError, ValueError):
            pass
        finally:
            shut(client)
            try:
                rfile.close()
            except OSError:
                pass
            client.close()

    def exchange(self, client, rfile, head):
        """Serve one request; whether the connection may be used again."""
        parts = head.start.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ProtocolError("bad request line")
        method, target, version = parts
        framing = head.framing()
        connection = head.tokens("connection")
        keep = "close" not in connection and (
            version != "HTTP/1.0" or "keep-alive" in connection
        )
        expect = "100-continue" in head.tokens("expect")

        if self.throttle.hit(method, target):
            if expect and framing is not None:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            copy_body(rfile, None, framing)
            lines = [
                "HTTP/1.1 503 Service Unavailable",
                "Content-Type: application/xml",
                f"Content-Length: {len(SLOW_DOWN_BODY)}",
            ]
            if not keep:
                lines.append("Connection: close")
            out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if method != "HEAD":
                out += SLOW_DOWN_BODY
            client.sendall(out)
            return keep

        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            return False
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        urfile = upstream.makefile("rb", buffering=COPY_SIZE)
        pump = None
        pumped = []
        try:
            upstream.sendall(head.encode())
            if framing is not None:
                # The body goes up while the response comes down, so that
                # interim responses (100 Continue) reach the client, which
                # may wait for one before it sends the body.
                def forward_body():
                    try:
                        copy_body(rfile, upstream, framing)
                        pumped.append(True)
                    except (OSError, ProtocolError, ValueError):
                        shut(upstream)

                pump = threading.Thread(target=forward_body, daemon=True)
                pump.start()

            while True:
                response = read_head(urfile)
                if response is None:
                    raise ProtocolError("no response from upstream")
                status = response.start.split(" ", 2)
                if len(status) < 2 or not status[1].isdigit():
                    raise ProtocolError("bad status line")
                code = int(status[1])
                if 100 <= code < 200 and code != 101:
                    client.sendall(response.encode())
                    continue
                break

            if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
                body = ("none",)
            else:
                body = response.framing() or ("close",)
            keep = keep and body[0] != "close"
            hop = ("Connection", "Keep-Alive")
            add = () if keep else (("Connection", "close"),)
            client.sendall(response.encode(drop=hop, add=add))
            if body[0] == "close":
                copy_to_end(urfile, client)
            elif body[0] != "none":
                copy_body(urfile, client, body)

            if pump is not None:
                pump.join(PUMP_GRACE)
                if pump.is_alive() or not pumped:
                    # The request body was not all read: the connection
                    # is out of step.
                    return False
            return keep
        finally:
            shut(upstream)
            if pump is not None and pump.is_alive():
                shut(client)
                pump.join()
            try:
                urfile.close()
            except OSError:
                pass
            upstream.close()


def proxy(args):
    RATE.rate = args.rate
    throttle = Throttle(args.throttle_every, args.throttle_first, args.log, args.requests)
    handler = Proxy(args.upstream, throttle)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, args.port))
    listener.listen(128)
    port = listener.getsockname()[1]
    write_atomically(args.port_file, f"{port}\n")
    while True:
        try:
            client, _ = listener.accept()
        except InterruptedError:
            continue
        threading.Thread(target=handler.handle, args=(client,), daemon=True).start()


# --- boto3 helpers -----------------------------------------------------------


def client(args):
    import boto3
    from botocore.config import Config

    with open(args.creds_file) as f:
        creds = json.load(f)
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name=REGION,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 10},
        ),
    )


def print_json(value):
    json.dump(value, sys.stdout)
    sys.stdout.write("\n")


def uploads(args):
    s3 = client(args)
    out = []
    markers = {}
    while True:
        page = s3.list_multipart_uploads(Bucket=args.bucket, **markers)
        out.extend(
            {"key": u["Key"], "upload_id": u["UploadId"]}
            for u in page.get("Uploads", [])
        )
        if not page.get("IsTruncated"):
            break
        markers = {
            "KeyMarker": page["NextKeyMarker"],
            "UploadIdMarker": page["NextUploadIdMarker"],
        }
    print_json(out)


def keys(args):
    s3 = client(args)
    out = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=args.bucket, Prefix=args.prefix
    )
    for page in pages:
        out.extend(o["Key"] for o in page.get("Contents", []))
    print_json(out)


def put(args):
    from boto3.s3.transfer import TransferConfig

    s3 = client(args)
    config = TransferConfig(
        multipart_threshold=64 << 20, multipart_chunksize=16 << 20
    )
    s3.upload_file(args.file, args.bucket, args.key, Config=config)


def get(args):
    s3 = client(args)
    # One plain GET: moto reads a whole object for every ranged GET.
    body = s3.get_object(Bucket=args.bucket, Key=args.key)["Body"]
    tmp = args.out + ".part"
    with open(tmp, "wb") as f:
        for data in body.iter_chunks(COPY_SIZE):
            f.write(data)
    os.replace(tmp, args.out)


def begin(args):
    s3 = client(args)
    upload_id = s3.create_multipart_upload(Bucket=args.bucket, Key=args.key)["UploadId"]
    s3.upload_part(
        Bucket=args.bucket, Key=args.key, UploadId=upload_id, PartNumber=1, Body=b"part"
    )
    print_json(upload_id)


def abort(args):
    s3 = client(args)
    s3.abort_multipart_upload(Bucket=args.bucket, Key=args.key, UploadId=args.upload_id)


# --- command line ------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run an S3 server")
    p.add_argument("--port-file", required=True)
    p.add_argument("--creds-file", required=True)
    p.add_argument("--bucket", action="append", default=[])
    p.add_argument(
        "--tmp-dir", help="where stored objects spill to (default: the system's)"
    )
    p.set_defaults(run=serve)

    p = commands.add_parser("proxy", help="run a proxy in front of the server")
    p.add_argument("--port-file", required=True)
    p.add_argument("--upstream", type=int, required=True, help="the server's port")
    p.add_argument(
        "--port", type=int, default=0, help="the port to listen on (default: a free one)"
    )
    p.add_argument(
        "--throttle-every",
        type=int,
        default=0,
        metavar="K",
        help="answer every K-th request (over all connections) with 503 SlowDown",
    )
    p.add_argument(
        "--throttle-first",
        type=int,
        default=0,
        metavar="N",
        help="answer the first N requests with 503 SlowDown",
    )
    p.add_argument("--log", help="append 'METHOD TARGET' per throttled request")
    p.add_argument("--requests", help="append 'METHOD TARGET' per request")
    p.add_argument(
        "--rate",
        type=float,
        default=0,
        metavar="BYTES",
        help="forward request bodies at most this fast (bytes per second, over all connections)",
    )
    p.set_defaults(run=proxy)

    def boto_command(name, help):
        p = commands.add_parser(name, help=help)
        p.add_argument("--endpoint", required=True, help="http://127.0.0.1:PORT")
        p.add_argument("--creds-file", required=True)
        p.add_argument("--bucket", required=True)
        return p

    p = boto_command("uploads", "list unfinished multipart uploads as JSON")
    p.set_defaults(run=uploads)
    p = boto_command("keys", "list the keys of a bucket as JSON")
    p.add_argument("--prefix", default="")
    p.set_defaults(run=keys)
    p = boto_command("put", "upload a file as one object")
    p.add_argument("--key", required=True)
    p.add_argument("--file", required=True)
    p.set_defaults(run=put)
    p = boto_command("get", "download one object to a file")
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=get)
    p = boto_command("begin", "begin a multipart upload and leave it unfinished")
    p.add_argument("--key", required=True)
    p.set_defaults(run=begin)
    p = boto_command("abort", "abort a multipart upload")
    p.add_argument("--key", required=True)
    p.add_argument("--upload-id", required=True)
    p.set_defaults(run=abort)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
