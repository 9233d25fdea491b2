"""A do-nothing Xet CAS for `benches/xet.py`: it answers `hf_xet`'s upload requests as soon as
each body has arrived, keeping nothing and checking nothing, so a client run against it costs
what `hf_xet` alone costs (ADR 0010, "client memory"). Not a test double: no test uses it; it
only bounds from below what any server can make the client spend.

    python benches/null_cas.py PORT_FILE [--delay-ms N]

Writes the port it listens on (127.0.0.1) to PORT_FILE. Routes: the write-token refresh
(`GET …/xet-write-token/…` → `{accessToken, exp, casUrl}` naming itself); `POST
/v1/xorbs/…` → `{"was_inserted": true}` (after `--delay-ms`, to mimic a server's latency per
xorb); `POST /v1/shards` → `{"result": 1}`; `GET /stats` → bytes received; everything else 404
(`/v2/shards`, `/v1/xorb-grants`, global dedup `/v1/chunks`: the client falls back or dedups
nothing, as against hubmesh).
"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVED = 0
LOCK = threading.Lock()
DELAY = 0.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drain(self):
        """Reads and drops the body (Content-Length or chunked); returns its length."""
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()  # the empty trailer line
                    break
                while size:
                    got = len(self.rfile.read(min(size, 1 << 20)))
                    if not got:
                        raise ConnectionError("body cut short")
                    size -= got
                    n += got
                self.rfile.readline()  # the CRLF after each chunk
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                got = len(self.rfile.read(min(left, 1 << 20)))
                if not got:
                    raise ConnectionError("body cut short")
                left -= got
                n += got
        global RECEIVED
        with LOCK:
            RECEIVED += n
        return n

    def do_GET(self):
        if "/xet-write-token/" in self.path or "/xet-read-token/" in self.path:
            port = self.server.server_address[1]
            return self.answer(200, {"accessToken": "null", "exp": int(time.time()) + 3600,
                                     "casUrl": f"http://127.0.0.1:{port}"})
        if self.path == "/stats":
            return self.answer(200, {"received": RECEIVED})
        self.answer(404, {"error": "not served"})

    def do_HEAD(self):
        self.answer(404)

    def do_POST(self):
        self.drain()
        if self.path.startswith("/v1/xorbs/"):
            if DELAY:
                time.sleep(DELAY)
            return self.answer(200, {"was_inserted": True})
        if self.path == "/v1/shards":
            return self.answer(200, {"result": 1})
        self.answer(404, {"error": "not served"})


def main():
    global DELAY
    args = sys.argv[1:]
    if "--delay-ms" in args:
        i = args.index("--delay-ms")
        DELAY = int(args[i + 1]) / 1000
        del args[i : i + 2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(args[0], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
