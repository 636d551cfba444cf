#!/usr/bin/python3
"""The metrics port as a hostile or careless client uses it, against the real lizard-server.

Every request here once killed the server (civetweb's worker stacks overflowed) or held /metrics
for as long as the client liked; now each gets its status, and the server goes on serving gRPC and
/metrics. Raw sockets, so that malformed requests go out exactly as written. Usage:

  /usr/bin/python3 test_metrics_http.py --server BUILD/server/lizard-server --model MODEL_DIR
"""
import argparse
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import grpc

import server_testing

ARGS = None


def exchange(port, data, timeout_s=10):
    """Sends `data`, half-closes, and returns everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def status_and_headers(response):
    """(status code, {lowercase header: value}) of the first response in `response`."""
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
    return int(head[0].split()[1]), {k.strip().lower(): v.strip() for k, v in headers.items()}


# (request bytes, expected status, expected Allow header or None)
HOSTILE = [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404, None),
    (b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n", 404, None),
    (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404, None),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 405, "GET, HEAD"),
    (b"OPTIONS /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405, "GET, HEAD"),
    (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405, "GET, HEAD"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     400, None),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", 413, None),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", 405,
     "GET, HEAD"),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n",
     405, "GET, HEAD"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n",
     400, None),
    (b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
    (b"\x00\xff garbage\r\n\r\n", 400, None),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, None),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, None),
    (b"GET /metrics HTTP/1.1\r\n" + b"X-Many: a\r\n" * 3000 + b"\r\n", 431, None),
]


class Server(server_testing.Server):
    def __init__(self, *flags):
        super().__init__(ARGS.server, ARGS.model, *flags)
        self.channel = grpc.insecure_channel(self.address)

    def assert_serving(self, test):
        """gRPC (health and a Lizard RPC) and /metrics still answer."""
        test.assertIsNone(self.proc.poll(), "the server died:\n" + self.log_text())
        test.assertEqual(server_testing.health(self.channel), "SERVING")
        # GetModelInfo with hand-encoded bytes (an empty request): no generated stubs needed.
        get_model_info = self.channel.unary_unary("/lizard.v1.Lizard/GetModelInfo",
                                                  request_serializer=lambda b: b,
                                                  response_deserializer=lambda b: b)
        test.assertTrue(get_model_info(b"", timeout=30))
        test.assertIn("lizard_requests_total", self.metrics())

    def close(self):
        self.channel.close()
        super().close()


class MetricsHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_hostile_requests_get_a_status_and_the_server_keeps_serving(self):
        for request, status, allow in HOSTILE:
            with self.subTest(request=request[:60]):
                response = exchange(self.server.metrics_port, request)
                self.assertTrue(response, "no response (the server died?)")
                code, headers = status_and_headers(response)
                self.assertEqual(code, status)
                self.assertEqual(headers.get("allow"), allow)
                self.assertEqual(headers.get("connection"), "close")  # errors close
                self.assertEqual(response.count(b"HTTP/1.1 "), 1)
        self.server.assert_serving(self)

    def test_get_and_head(self):
        port = self.server.metrics_port
        get = exchange(port, b"GET /metrics?debug=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        code, headers = status_and_headers(get)
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], "text/plain; version=0.0.4")
        body = get.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(len(body), int(headers["content-length"]))
        self.assertIn(b"# TYPE lizard_requests_total counter", body)
        head = exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        code, headers = status_and_headers(head)
        self.assertEqual(code, 200)
        self.assertTrue(head.endswith(b"\r\n\r\n"), "a HEAD response has no body")

    def test_ranges_are_ignored(self):
        # httplib would send one copy of the page per range: 2000 ranges made 15 MB.
        ranges = b",".join([b"0-"] * 2000)
        response = exchange(self.server.metrics_port,
                            b"GET /metrics HTTP/1.1\r\nRange: bytes=" + ranges + b"\r\n\r\n")
        code, headers = status_and_headers(response)
        self.assertEqual(code, 200)
        self.assertEqual(len(response.split(b"\r\n\r\n", 1)[1]), int(headers["content-length"]))
        self.assertLess(len(response), 1 << 20)

    def test_keep_alive_serves_pipelined_requests(self):
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        response = exchange(self.server.metrics_port, request * 3)
        self.assertEqual(response.count(b"HTTP/1.1 200 OK\r\n"), 3)

    def test_idle_and_half_sent_connections_do_not_starve_scrapes(self):
        # Far more than the endpoint's 8 threads + 8 pending, all left open: each would hold a
        # worker until its 5 s request timeout; a scrape must not wait for those.
        idle = []
        try:
            for i in range(40):
                sock = socket.create_connection(("127.0.0.1", self.server.metrics_port))
                if i % 2:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
                idle.append(sock)
            for _ in range(3):
                start = time.monotonic()
                page = self.server.metrics()
                self.assertIn("lizard_requests_total", page)
                self.assertLess(time.monotonic() - start, 4.0)
        finally:
            for sock in idle:
                sock.close()
        self.server.assert_serving(self)

    def test_a_busy_metrics_port_fails_startup(self):
        with tempfile.TemporaryFile() as log:
            proc = subprocess.run(
                [ARGS.server, "--model", ARGS.model, "--host", "127.0.0.1", "--port", "0",
                 "--metrics-port", str(self.server.metrics_port)],
                stdout=log, stderr=subprocess.STDOUT, timeout=60)
            log.seek(0)
            text = log.read().decode(errors="replace")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("metrics: cannot listen on 127.0.0.1:%d" % self.server.metrics_port, text)
        self.assertIn("Address already in use", text)
        self.server.assert_serving(self)

    def test_metrics_host_defaults_to_loopback(self):
        usage = subprocess.run([ARGS.server, "--helpfull"], capture_output=True, text=True,
                               timeout=30).stdout
        self.assertRegex(usage, r'--metrics_host \([^;]*\); default: "127\.0\.0\.1";')


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
