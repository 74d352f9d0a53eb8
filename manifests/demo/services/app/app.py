"""A tiny demo service: GET /health, GET / (name, version, upstream)."""
import argparse
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "1.0.0"


def upstream_ok(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"status": "ok", "version": VERSION})
        elif self.path == "/":
            body = {"name": self.server.name, "version": VERSION,
                    "greeting": os.environ.get("GREETING", "hello")}
            up = os.environ.get("UPSTREAM")
            if up:
                body["upstream"] = {"url": up, "healthy": upstream_ok(up)}
            self.reply(200, body)
        else:
            self.reply(404, {"error": "not found"})

    def reply(self, code, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print("%s %s" % (self.server.name, fmt % args), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="demo")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.name = a.name
    print("%s %s listening on 127.0.0.1:%d" % (a.name, VERSION, a.port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
