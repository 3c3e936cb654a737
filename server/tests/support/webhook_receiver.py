"""A webhook receiver on loopback for the integration tests: Python's own HTTP server, which
records every request (path, headers, body) as a JSON line and answers by path:
  /ok…        204
  /flaky…     500 to the first three attempts of each webhook-id, then 200
  /gone…      410
  /redirect…  302 to /redirected (which would answer 200 and must never be reached)
  /down…      503
Usage: webhook_receiver.py PORT LOG"""
import collections
import http.server
import json
import sys

port, log_path = int(sys.argv[1]), sys.argv[2]
seen = collections.Counter()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        wid = self.headers.get("webhook-id", "")
        path = self.path
        if path.startswith("/ok") or path.startswith("/redirected"):
            status = 204 if path.startswith("/ok") else 200
        elif path.startswith("/flaky"):
            seen[wid] += 1
            status = 500 if seen[wid] <= 3 else 200
        elif path.startswith("/gone"):
            status = 410
        elif path.startswith("/redirect"):
            status = 302
        else:
            status = 503
        with open(log_path, "a") as f:
            f.write(json.dumps({
                "path": path, "status": status, "body": body,
                "id": wid, "timestamp": self.headers.get("webhook-timestamp", ""),
                "signature": self.headers.get("webhook-signature", ""),
                "content_type": self.headers.get("content-type", ""),
            }) + "\n")
        self.send_response(status)
        if status == 302:
            self.send_header("location", "/redirected")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
