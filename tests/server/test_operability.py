#!/usr/bin/python3
"""Operability of lizard-server (the real binary on 127.0.0.1):
  * gRPC server reflection v1 answers exactly as v1alpha (hand-encoded requests, as Debian
    packages no reflection client), and methods nobody serves stay UNIMPLEMENTED;
  * one log line per request, gRPC and HTTP, as text and as JSON lines (--log-format), with
    every non-OK status and its message; model-loading progress at startup;
  * the HTTP API over HTTPS (--http-tls), checked with curl --cacert against certificates made
    with openssl at test time, with and without client certificates;
  * --model synthetic:SHAPE (random weights, no tokenizer; what GPU load tests serve): token
    ids are served, text is refused, a bad shape fails startup.
Usage:

  /usr/bin/python3 test_operability.py --server BUILD/server/lizard-server --model MODEL_DIR \
      --proto-dir REPO/proto
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import grpc
from google.protobuf import descriptor_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_testing  # noqa: E402
import test_security  # noqa: E402  (its certificates)

ARGS = None
pb = pbg = None


def length_delimited(field, payload):
    """A protobuf length-delimited field (payload < 128 bytes)."""
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def varint(data, i):
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def fields(message):
    """{field number: [values]} of a protobuf message (varints and length-delimited only)."""
    out, i = {}, 0
    while i < len(message):
        key, i = varint(message, i)
        if key & 7 == 0:
            value, i = varint(message, i)
        else:
            assert key & 7 == 2, key
            length, i = varint(message, i)
            value, i = message[i:i + length], i + length
        out.setdefault(key >> 3, []).append(value)
    return out


# ServerReflectionRequest: file_by_filename = 3, file_containing_symbol = 4, list_services = 7.
LIST_SERVICES = length_delimited(7, b"")
FILE_OF_SYMBOL = length_delimited(4, b"lizard.v1.Lizard")
FILE_BY_NAME = length_delimited(3, b"lizard/v1/lizard.proto")
UNKNOWN_SYMBOL = length_delimited(4, b"no.such.Service")


def reflect(channel, version, requests):
    """The responses of one ServerReflectionInfo stream of `version` to `requests`."""
    call = channel.stream_stream(
        "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % version,
        request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return list(call(iter(requests), timeout=10))


class ReflectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = server_testing.Server(ARGS.server, ARGS.model)
        cls.channel = grpc.insecure_channel(cls.server.address)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.close()

    def test_v1_answers_as_v1alpha(self):
        requests = [LIST_SERVICES, FILE_OF_SYMBOL, FILE_BY_NAME, UNKNOWN_SYMBOL]
        v1 = reflect(self.channel, "v1", requests)
        self.assertEqual(v1, reflect(self.channel, "v1alpha", requests))
        self.assertEqual(len(v1), len(requests))
        # ServerReflectionResponse: list_services_response = 6 {service = 1 {name = 1}}.
        services = [fields(s)[1][0] for s in fields(fields(v1[0])[6][0])[1]]
        self.assertIn(b"lizard.v1.Lizard", services)
        self.assertIn(b"grpc.health.v1.Health", services)
        # file_descriptor_response = 4 {file_descriptor_proto = 1}: lizard.proto first.
        for response in v1[1:3]:
            proto = descriptor_pb2.FileDescriptorProto.FromString(
                fields(fields(response)[4][0])[1][0])
            self.assertEqual(proto.name, "lizard/v1/lizard.proto")
            self.assertIn("Lizard", [s.name for s in proto.service])
        # error_response = 7 {error_code = 1}: NOT_FOUND (5).
        self.assertEqual(fields(fields(v1[3])[7][0])[1][0], 5)

    def test_several_streams_at_once(self):
        calls = [self.channel.stream_stream(
                     "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                     request_serializer=lambda b: b,
                     response_deserializer=lambda b: b)(iter([LIST_SERVICES] * 3), timeout=10)
                 for _ in range(8)]
        for call in calls:
            self.assertEqual(len(list(call)), 3)

    def test_other_methods_stay_unimplemented(self):
        call = self.channel.unary_unary("/no.such.Service/Method",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNIMPLEMENTED)


class HttpServer(server_testing.HttpServer):
    """lizard-server with the HTTP API (http or https) on a free port."""

    def __init__(self, *flags, scheme="http"):
        self.scheme = scheme
        super().__init__(ARGS.server, ARGS.model, *flags)

    def url(self, path):
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.http_port, path)


def post(server, path, body):
    """(status, parsed JSON) of a POST to the plain-HTTP API."""
    request = urllib.request.Request(server.url(path), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(server, pattern, timeout_s=10):
    """The first match of `pattern` in the server's log, waiting for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        match = re.search(pattern, server.log_text(), re.M)
        if match or time.monotonic() > deadline:
            return match
        time.sleep(0.02)


class RequestLogTest(unittest.TestCase):
    def generate(self, server, **request):
        with grpc.insecure_channel(server.address) as channel:
            return list(pbg.LizardStub(channel).Generate(pb.GenerateRequest(**request),
                                                         timeout=30))

    def test_json_lines(self):
        server = HttpServer("--log-format", "json")
        try:
            self.generate(server, text="Once upon a time", request_id="client-7",
                          stopping=pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True))
            with grpc.insecure_channel(server.address) as channel:
                with self.assertRaises(grpc.RpcError):
                    pbg.LizardStub(channel).GetSession(pb.GetSessionRequest(session_id="abc"),
                                                       timeout=10)
            status, completion = post(server, "/v1/completions",
                                      {"prompt": "Hello", "max_tokens": 3, "ignore_eos": True})
            self.assertEqual(status, 200)
            status, _ = post(server, "/v1/completions", {"prompt": "Hello", "model": "nope"})
            self.assertEqual(status, 404)
            # HTTP lines may follow their response by a moment. (nlohmann::json sorts keys.)
            for status in ("OK", "NOT_FOUND"):
                self.assertTrue(wait_for(server, r'"rpc":"/v1/completions","status":"%s"' % status))
            # The engine prints a line of its own (which backend it picked) as plain text.
            lines = [json.loads(line) for line in server.log_text().splitlines()
                     if not line.startswith("no usable CUDA device")]
        finally:
            server.close()
        for line in lines:  # every line is a JSON object with these
            self.assertEqual(set(line) >= {"time", "level", "message"}, True, line)
        requests = {}
        for line in lines:
            if "rpc" in line:
                requests.setdefault((line["rpc"], line["status"]), line)

        generate = requests[("Generate", "OK")]
        self.assertEqual(generate["level"], "info")
        self.assertEqual(generate["client_request_id"], "client-7")
        self.assertRegex(generate["request_id"], r"^[0-9a-f]{32}$")
        self.assertGreater(generate["prompt_tokens"], 1)
        self.assertEqual(generate["generated_tokens"], 4)
        self.assertLessEqual(generate["ttft_ms"], generate["duration_ms"])
        self.assertTrue(generate["message"].startswith("request Generate OK id="), generate)

        missing = requests[("GetSession", "NOT_FOUND")]
        self.assertIn("abc", missing["error"])
        self.assertNotIn("ttft_ms", missing)

        http = requests[("/v1/completions", "OK")]
        self.assertEqual(http["request_id"], completion["id"])
        self.assertEqual(http["prompt_tokens"], completion["usage"]["prompt_tokens"])
        self.assertEqual(http["generated_tokens"], 3)
        self.assertIn("does not exist", requests[("/v1/completions", "NOT_FOUND")]["error"])

        messages = [line["message"] for line in lines]
        self.assertTrue(any(re.match(r"loading model .*: 1 safetensors files, [\d.]+ MiB$", m)
                            for m in messages), messages)
        self.assertTrue(any(re.match(r"loading model: (\d+)/\1 tensors, ([\d.]+)/\2 MiB, [\d.]+ s$", m)
                            for m in messages), messages)
        self.assertTrue(any(re.match(r"model loaded in [\d.]+ s \(", m) for m in messages))

    def test_text_lines(self):
        server = server_testing.Server(ARGS.server, ARGS.model)
        try:
            with self.assertRaises(grpc.RpcError):
                self.generate(server, text="Hi", session_id="no-such-session")
            self.generate(server, text="Hi", stopping=pb.StoppingCriteria(max_new_tokens=2,
                                                                          ignore_eos=True))
            ok = wait_for(server, r"^\S+ I request Generate OK id=[0-9a-f]{32} prompt_tokens=\d+ "
                                  r"generated_tokens=2 ttft_ms=[\d.]+ duration_ms=[\d.]+$")
            failed = wait_for(server, r"^\S+ I request Generate NOT_FOUND id=\S+ prompt_tokens=0 "
                                      r"generated_tokens=0 duration_ms=[\d.]+ "
                                      r'session_id="no-such-session" error=".*"$')
            text = server.log_text()
        finally:
            server.close()
        self.assertTrue(ok, text)
        self.assertTrue(failed, text)
        self.assertRegex(text, r"I loading model .*: 1 safetensors files")
        self.assertRegex(text, r"I model loaded in [\d.]+ s")

    def test_bad_log_format(self):
        result = subprocess.run([ARGS.server, "--log-format", "xml"], capture_output=True,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertIn("--log-format=xml", result.stderr)


class SyntheticModelTest(unittest.TestCase):
    def test_token_ids_are_served_and_text_is_refused(self):
        server = server_testing.Server(ARGS.server, "synthetic:tiny")
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = pbg.LizardStub(channel)
                tokens = [t for r in stub.Generate(pb.GenerateRequest(
                    token_ids=pb.TokenIds(ids=[1, 2, 3]),
                    stopping=pb.StoppingCriteria(max_new_tokens=5, ignore_eos=True)), timeout=30)
                    for t in r.token_ids]
                self.assertEqual(len(tokens), 5)
                with self.assertRaises(grpc.RpcError) as refused:
                    list(stub.Generate(pb.GenerateRequest(text="Hi"), timeout=30))
                self.assertEqual(refused.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
            text = server.log_text()
        finally:
            server.close()
        self.assertIn("random weights (synthetic shape", text)

    def test_unknown_shape_fails_startup(self):
        result = subprocess.run([ARGS.server, "--model", "synthetic:nope", "--port", "0"],
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--model synthetic:nope", result.stderr)


class HttpsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.TemporaryDirectory()
        test_security.CERTS = cls.certs.name
        test_security.make_certificates()

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def curl(self, server, path, *flags, body=None):
        """(curl's exit code, response body) of a request to the HTTPS API."""
        data = ["-H", "Content-Type: application/json", "-d", json.dumps(body)] if body else []
        result = subprocess.run(["curl", "-sS", "--max-time", "30", *flags, *data,
                                 server.url(path)], capture_output=True, text=True)
        return result.returncode, result.stdout + result.stderr

    def tls_flags(self):
        return ["--tls-cert", test_security.cert("server.pem"),
                "--tls-key", test_security.cert("server.key")]

    def test_https(self):
        server = HttpServer("--http-tls", *self.tls_flags(), scheme="https")
        try:
            self.assertIn("HTTPS", server.log_text())
            ca = ["--cacert", test_security.cert("ca.pem")]
            code, models = self.curl(server, "/v1/models", *ca)
            self.assertEqual(code, 0, models)
            self.assertEqual(json.loads(models)["object"], "list")
            code, stream = self.curl(server, "/v1/completions", "-N", *ca,
                                     body={"prompt": "Hello", "max_tokens": 3, "stream": True})
            self.assertEqual(code, 0, stream)
            self.assertTrue(stream.endswith("data: [DONE]\n\n"), stream)
            # The certificate is checked: without the CA curl refuses it (60).
            self.assertEqual(self.curl(server, "/v1/models")[0], 60)
            # Plain HTTP gets no answer.
            plain = server.url("/v1/models").replace("https://", "http://")
            result = subprocess.run(["curl", "-sS", "--max-time", "10", plain],
                                    capture_output=True, text=True)
            self.assertNotEqual(result.returncode, 0)
            self.assertNotIn('"object"', result.stdout)
            # Still serving.
            self.assertEqual(self.curl(server, "/v1/models", *ca)[0], 0)
        finally:
            server.close()

    def test_client_certificates(self):
        server = HttpServer("--http-tls", *self.tls_flags(),
                            "--tls-client-ca", test_security.cert("ca.pem"), scheme="https")
        try:
            ca = ["--cacert", test_security.cert("ca.pem")]
            self.assertNotEqual(self.curl(server, "/v1/models", *ca)[0], 0)
            code, models = self.curl(server, "/v1/models", *ca,
                                     "--cert", test_security.cert("client.pem"),
                                     "--key", test_security.cert("client.key"))
            self.assertEqual(code, 0, models)
        finally:
            server.close()

    def test_http_tls_needs_a_certificate(self):
        test_security.ARGS = ARGS
        output = test_security.start_failure("--http-tls")
        self.assertIn("--http-tls needs --tls-cert and --tls-key", output)


if __name__ == "__main__":
    server_testing.run_tests(globals())
