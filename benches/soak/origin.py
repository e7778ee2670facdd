"""The soak test's origin: a threaded HTTP server that answers each path the way a real API
would, and echoes who asked, so the soak can prove no client was ever served another's data.

  /pub/<n>          Cache-Control: public, max-age=30        shared data
  /me               no caching headers; body names the caller's cookie   personal data
  /users/<id>       no caching headers (the route ttl applies)
  /users/<id>/orders Cache-Control: max-age=10
  anything else     Cache-Control: max-age=5
A POST/PUT/DELETE answers 200. Bodies are about 1 KiB of JSON.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAD = "x" * 900
count = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, cc, body):
        global count
        with lock:
            count += 1
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if cc:
            self.send_header("cache-control", cc)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        who = self.headers.get("cookie", "")
        if path.startswith("/pub/"):
            self.answer("public, max-age=30", f'{{"path":"{path}","pad":"{PAD}"}}')
        elif path == "/me":
            self.answer(None, f'{{"me":"{who}","pad":"{PAD}"}}')
        elif path.startswith("/users/") and path.endswith("/orders"):
            self.answer("max-age=10", f'{{"orders":"{path}","pad":"{PAD}"}}')
        elif path.startswith("/users/"):
            self.answer(None, f'{{"user":"{path}","pad":"{PAD}"}}')
        else:
            self.answer("max-age=5", f'{{"path":"{path}","pad":"{PAD}"}}')

    do_HEAD = do_GET

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.answer("no-store", '{"ok":true}')

    do_PUT = do_POST
    do_DELETE = do_POST


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
