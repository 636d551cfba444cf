#!/usr/bin/python3
"""Integration test of lizard-server's API keys and TLS / mutual TLS (docs/server.md, "Security").

Certificates are made at test time with the openssl command line tool: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate. Every server runs the real binary
on 127.0.0.1. Usage:

  /usr/bin/python3 test_security.py --server BUILD/server/lizard-server --model MODEL_DIR \
      --proto-dir REPO/proto
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import unittest

import grpc

import server_testing

ARGS = None
CERTS = None  # directory of the generated PEM files
pb = pbg = None  # lizard_pb2, lizard_pb2_grpc (generated in main)

KEY = "k3y-0123456789abcdef0123456789abcdef"
OTHER_KEY = "second-key"


def openssl(*args):
    subprocess.run(["openssl", *args], cwd=CERTS, check=True, capture_output=True)


def make_certificates():
    """ca.pem; server.pem/server.key (SAN 127.0.0.1, localhost); client.pem/client.key;
    other.key (matches no certificate)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=lizard test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, extensions in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n")]:
        openssl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=lizard test " + name)
        with open(os.path.join(CERTS, name + ".ext"), "w") as f:
            f.write(extensions)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", "1" if name == "server" else "2", "-days", "2",
                "-extfile", name + ".ext", "-out", name + ".pem")
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", "other.key")


def cert(name):
    return os.path.join(CERTS, name)


def read(name):
    with open(cert(name), "rb") as f:
        return f.read()


def write(name, text):
    with open(cert(name), "w") as f:
        f.write(text)
    return cert(name)


def bearer(key):
    return [("authorization", "Bearer " + key)]


def tls_channel(address, client_cert=True, server_name=None):
    """A channel that trusts the test CA; with client_cert, it presents client.pem; with
    server_name, it checks the server certificate for that name instead of the address."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read("client.key") if client_cert else None,
        certificate_chain=read("client.pem") if client_cert else None)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    return grpc.secure_channel(address, credentials, options)


def call_every_rpc(stub, metadata):
    """Calls each lizard.v1.Lizard method once; returns {method: status code}."""
    calls = {
        "Generate": lambda: list(stub.Generate(pb.GenerateRequest(
            text="hi", stopping=pb.StoppingCriteria(max_new_tokens=2)),
            metadata=metadata, timeout=10)),
        "CreateSession": lambda: stub.CreateSession(
            pb.CreateSessionRequest(), metadata=metadata, timeout=10),
        "GetSession": lambda: stub.GetSession(
            pb.GetSessionRequest(session_id="s"), metadata=metadata, timeout=10),
        "ForkSession": lambda: stub.ForkSession(
            pb.ForkSessionRequest(session_id="s"), metadata=metadata, timeout=10),
        "DeleteSession": lambda: stub.DeleteSession(
            pb.DeleteSessionRequest(session_id="s"), metadata=metadata, timeout=10),
        "Tokenize": lambda: stub.Tokenize(
            pb.TokenizeRequest(text="hi"), metadata=metadata, timeout=10),
        "Detokenize": lambda: stub.Detokenize(
            pb.DetokenizeRequest(token_ids=[1]), metadata=metadata, timeout=10),
        "GetModelInfo": lambda: stub.GetModelInfo(
            pb.GetModelInfoRequest(), metadata=metadata, timeout=10),
    }
    codes = {}
    for method, call in calls.items():
        try:
            call()
            codes[method] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            codes[method] = e.code()
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                # Whatever was sent never comes back.
                for key in (KEY, OTHER_KEY):
                    assert key not in e.details(), e.details()
    return codes


def reflection_lists_lizard(channel):
    """Whether both reflection versions, v1alpha and v1, list lizard.v1.Lizard."""
    listed = []
    for version in ("v1alpha", "v1"):
        reflect = channel.stream_stream(
            "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % version,
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        # ServerReflectionRequest{list_services: ""} is field 7, length-delimited.
        listed.append(b"lizard.v1.Lizard" in b"".join(reflect(iter([b"\x3a\x00"]), timeout=10)))
    return all(listed)


def start_failure(*flags):
    """Runs the server with flags that must stop it at startup; returns its output."""
    result = subprocess.run([ARGS.server, "--model", ARGS.model, "--host", "127.0.0.1",
                             "--port", "0", "--metrics-port", "0", "--http-port", "0", *flags],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


class ApiKeyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        keys = write("keys", "# lizard API keys\n\n  %s  \n%s\r\n" % (KEY, OTHER_KEY))
        cls.server = server_testing.Server(ARGS.server, ARGS.model, "--api-keys-file", keys)
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.stub = pbg.LizardStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.close()

    def prompt_tokens(self):
        return re.search(r"^lizard_prompt_tokens_total (\S+)$", self.server.metrics(), re.M)[1]

    def test_every_rpc_needs_a_valid_key(self):
        prompt_tokens = self.prompt_tokens()
        unauthenticated = {method: grpc.StatusCode.UNAUTHENTICATED
                           for method in call_every_rpc(self.stub, None)}
        for metadata in [None,                               # no key
                         bearer("wrong-key-0123456789abcdef0123456789a"),  # same length
                         bearer(KEY[:-1]), bearer(KEY + "x"),  # a prefix, a longer one
                         bearer("x"),                          # other length
                         [("authorization", KEY)],             # no scheme
                         [("authorization", "Basic " + KEY)],  # other scheme
                         [("x-api-key", KEY)]]:                # other metadata
            self.assertEqual(call_every_rpc(self.stub, metadata), unauthenticated, metadata)
        # Refused before any handler: the engine saw nothing. Counted by method, but only for
        # methods of the service: made-up paths add no label.
        self.assertEqual(self.prompt_tokens(), prompt_tokens)
        for path in ["/lizard.v1.Lizard/NoSuchMethod", "/no.such.Service/Method"]:
            with self.assertRaises(grpc.RpcError) as caught:
                self.channel.unary_unary(path)(b"", timeout=10)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        page = self.server.metrics()
        for method in unauthenticated:
            self.assertRegex(page, r'lizard_requests_total\{code="UNAUTHENTICATED",rpc="%s"\} '
                             r'([89]|[1-9]\d+)\n' % method)
        self.assertNotIn("NoSuchMethod", page)
        self.assertNotIn("no.such.Service", page)

    def test_right_key(self):
        for metadata in [bearer(KEY), bearer(OTHER_KEY),
                         [("authorization", "bearer " + KEY)]]:  # the scheme is case-insensitive
            codes = call_every_rpc(self.stub, metadata)
            not_found = {"GetSession", "ForkSession", "DeleteSession"}  # session "s" is unknown
            self.assertEqual(codes, {method: grpc.StatusCode.NOT_FOUND if method in not_found
                                     else grpc.StatusCode.OK for method in codes}, metadata)
        session = self.stub.CreateSession(pb.CreateSessionRequest(), metadata=bearer(KEY))
        fork = self.stub.ForkSession(pb.ForkSessionRequest(session_id=session.session_id),
                                     metadata=bearer(OTHER_KEY))
        self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=fork.session_id),
                                metadata=bearer(KEY))

    def test_health_reflection_and_metrics_need_no_key(self):
        self.assertEqual(server_testing.health(self.channel), "SERVING")
        self.assertTrue(reflection_lists_lizard(self.channel))
        self.assertIn("lizard_sessions", self.server.metrics())


class TlsTest(unittest.TestCase):
    def test_tls(self):
        server = server_testing.Server(ARGS.server, ARGS.model, "--tls-cert", cert("server.pem"),
                                       "--tls-key", cert("server.key"))
        try:
            self.assertIn("grpc security: TLS, no API keys", server.log_text())
            for client_cert in (False, True):  # a client certificate is not asked for
                with tls_channel(server.address, client_cert) as channel:
                    info = pbg.LizardStub(channel).GetModelInfo(pb.GetModelInfoRequest(),
                                                                timeout=10)
                    self.assertEqual(info.vocab_size, 512)
                    self.assertEqual(server_testing.health(channel), "SERVING")
            # By name, too (the certificate's other subjectAltName).
            with tls_channel(server.address, server_name="localhost") as channel:
                self.assertEqual(server_testing.health(channel), "SERVING")
            with grpc.insecure_channel(server.address) as channel:
                with self.assertRaises(grpc.RpcError) as caught:
                    server_testing.health(channel, timeout_s=5)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
            # A client that trusts another CA refuses the server.
            with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(
                    root_certificates=read("client.pem"))) as channel:
                with self.assertRaises(grpc.RpcError) as caught:
                    server_testing.health(channel, timeout_s=5)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            server.close()

    def test_mutual_tls_with_api_keys(self):
        keys = write("mtls-keys", KEY + "\n")
        server = server_testing.Server(ARGS.server, ARGS.model, "--tls-cert", cert("server.pem"),
                                       "--tls-key", cert("server.key"),
                                       "--tls-client-ca", cert("ca.pem"),
                                       "--api-keys-file", keys)
        try:
            self.assertIn("grpc security: TLS with client certificates, API keys from",
                          server.log_text())
            with tls_channel(server.address, client_cert=False) as channel:
                with self.assertRaises(grpc.RpcError) as caught:
                    server_testing.health(channel, timeout_s=5)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
            with tls_channel(server.address) as channel:
                self.assertEqual(server_testing.health(channel), "SERVING")
                stub = pbg.LizardStub(channel)
                with self.assertRaises(grpc.RpcError) as caught:
                    stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=bearer(KEY),
                                         timeout=10)
                self.assertEqual(info.vocab_size, 512)
        finally:
            server.close()


class StartupTest(unittest.TestCase):
    """Bad security flags stop the server before it loads the model, with a clear message."""

    def test_bad_flags(self):
        missing = cert("no-such-file")
        empty = write("empty-keys", "# only a comment\n\n")
        bad_key = write("bad-keys", "%s\nwith space\n" % KEY)
        cases = [
            (["--api-keys-file", missing], "--api-keys-file %s: cannot open" % missing),
            (["--api-keys-file", CERTS], "--api-keys-file %s: cannot read" % CERTS),
            (["--api-keys-file", empty], "no key in it"),
            (["--api-keys-file", bad_key], "line 2: a key must be printable ASCII"),
            (["--tls-cert", cert("server.pem")], "--tls-cert and --tls-key go together"),
            (["--tls-key", cert("server.key")], "--tls-cert and --tls-key go together"),
            (["--tls-client-ca", cert("ca.pem")], "--tls-client-ca needs --tls-cert"),
            (["--tls-cert", missing, "--tls-key", cert("server.key")],
             "--tls-cert %s: cannot open" % missing),
            (["--tls-cert", cert("server.key"), "--tls-key", cert("server.key")],
             "no PEM certificate"),
            (["--tls-cert", cert("server.pem"), "--tls-key", cert("server.pem")],
             "no unencrypted PEM private key"),
            (["--tls-cert", cert("server.pem"), "--tls-key", cert("other.key")],
             "is not the key of --tls-cert"),
            (["--tls-cert", cert("server.pem"), "--tls-key", cert("server.key"),
              "--tls-client-ca", cert("server.key")], "--tls-client-ca"),
        ]
        for flags, message in cases:
            output = start_failure(*flags)
            self.assertIn(message, output, flags)
            self.assertNotIn("loaded model", output, flags)
        self.assertNotIn("with space", start_failure("--api-keys-file", bad_key))


def main():
    global ARGS, CERTS, pb, pbg
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as certs:
        CERTS = certs
        make_certificates()
        pb, pbg = server_testing.generate_stubs(ARGS.proto_dir, out)
        result = unittest.main(argv=[sys.argv[0]] + rest, exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
