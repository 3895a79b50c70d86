#!/usr/bin/env python3
"""A webhook receiver for trying webhookd: prints every request it gets and answers 200 `ack`.

Usage: python3 examples/receiver.py [PORT]   (default 9000; listens on 127.0.0.1 only)

`ack` is the body Rabo Smart Pay's rule requires; OBP receivers may answer any 2xx. Each request
is printed as its method and path, the ids and signature headers webhookd sends, and the body.
Standard library only. It verifies nothing: examples/verify/ shows how a receiver verifies
the signatures.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN = ("webhook-id", "webhook-timestamp", "webhook-signature",
         "x-smartpay-event-id", "x-smartpay-event-type", "x-smartpay-signature")


class Receiver(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        lines = [f"{self.command} {self.path}"]
        lines += [f"  {name}: {self.headers[name]}" for name in SHOWN if name in self.headers]
        lines.append(f"  body: {body}")
        print("\n".join(lines), flush=True)
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ack")

    do_POST = do_PUT = do_DELETE = do_GET = answer

    def log_message(self, *args):
        pass  # one block per request above is enough


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"receiver listening on http://127.0.0.1:{port}/", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
