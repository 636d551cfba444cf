"""Helpers of the Python tests that run lizard-server (tests/server/test_server.py,
tests/deploy/session_affinity_test.py): gRPC stubs generated at test time, the server process on
127.0.0.1 with free ports, and the health check without generated health stubs."""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request


def generate_stubs(proto_dir, out_dir):
    """Compiles PROTO_DIR/lizard/v1/lizard.proto into out_dir (or takes the stubs already in
    $LIZARD_PY_STUBS) and imports it; returns (lizard_pb2, lizard_pb2_grpc). Uses the system protoc
    and grpc_python_plugin: the protoc inside Debian's grpc_tools predates proto3 `optional`."""
    prebuilt = os.environ.get("LIZARD_PY_STUBS")  # stubs made elsewhere (the GPU machine has no protoc)
    if prebuilt:
        out_dir = prebuilt
    else:
        _compile_stubs(proto_dir, out_dir)
    sys.path.insert(0, out_dir)
    from lizard.v1 import lizard_pb2, lizard_pb2_grpc
    return lizard_pb2, lizard_pb2_grpc


def unittest_main(module_globals):
    """The main of a unittest script run as `SCRIPT --server BIN --model DIR --proto-dir DIR
    [unittest args]`: generates the stubs into a temporary folder, sets the script's globals
    ARGS (the parsed flags), pb and pbg (lizard_pb2, lizard_pb2_grpc), runs its tests and exits
    0 if all passed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto-dir", required=True)
    args, rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as out:
        pb, pbg = generate_stubs(args.proto_dir, out)
        module_globals.update(ARGS=args, pb=pb, pbg=pbg)
        result = unittest.main(argv=[sys.argv[0]] + rest, exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)


def _compile_stubs(proto_dir, out_dir):
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    subprocess.run([shutil.which("protoc") or "/usr/bin/protoc", "-I" + proto_dir,
                    "--python_out=" + out_dir, "--grpc_python_out=" + out_dir,
                    "--plugin=protoc-gen-grpc_python=" + plugin,
                    os.path.join(proto_dir, "lizard", "v1", "lizard.proto")], check=True)


def run_tests(module_globals):
    """The main() of a test file: parses --server, --model and --proto-dir into the module's ARGS,
    generates the stubs into its pb and pbg, runs its unittest cases (the other arguments select
    them) and exits 0 if all passed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto-dir", required=True)
    module_globals["ARGS"], rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as out:
        module_globals["pb"], module_globals["pbg"] = generate_stubs(module_globals["ARGS"].proto_dir,
                                                                     out)
        result = unittest.main(module=module_globals["__name__"], argv=[sys.argv[0]] + rest,
                               exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)


def free_port():
    """A port of 127.0.0.1 that was free a moment ago (a server binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(channel, timeout_s=10):
    """grpc.health.v1.Health/Check: "SERVING", "NOT_SERVING" or None. The request is an empty
    message; the response is HealthCheckResponse{status} (field 1 varint: 1 SERVING, 2 NOT_SERVING)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(check(b"", timeout=timeout_s))


class Server:
    """lizard-server on 127.0.0.1 with free ports; the log goes to a temporary file. Serving once
    the constructor returns: the server logs its "listening on" lines after health is SERVING."""

    def __init__(self, binary, model, *flags, startup_timeout_s=30):
        self.log = tempfile.NamedTemporaryFile(prefix="lizard-server-", suffix=".log")
        self.proc = subprocess.Popen(
            [binary, "--model", model, "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--http-port", "0",  # a test that wants HTTP sets it
             # Flags for every server of a run, e.g. "--backend cuda" on the GPU machine.
             *os.environ.get("LIZARD_TEST_SERVER_FLAGS", "").split(),
             *flags],  # a later --model wins
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            text = self.log_text()
            grpc_port = re.search(r"grpc listening on 127\.0\.0\.1:(\d+)", text)
            metrics_port = re.search(r"metrics listening on 127\.0\.0\.1:(\d+)", text)
            if grpc_port and metrics_port:
                self.port, self.metrics_port = int(grpc_port[1]), int(metrics_port[1])
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        text = self.log_text()
        Server.close(self)  # this class's close: a subclass's may need what it has not set up yet
        raise RuntimeError("lizard-server did not start:\n" + text)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def log_text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def metrics(self):
        """The /metrics page."""
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def close(self):
        """Kills the server if it still runs and removes its log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class HttpServer(Server):
    """A Server with the HTTP API on a free port of 127.0.0.1 (`http_port`), serving once the
    constructor returns."""

    def __init__(self, binary, model, *flags):
        self.http_port = free_port()
        super().__init__(binary, model, "--http-host", "127.0.0.1",
                         "--http-port", str(self.http_port), *flags)
        deadline = time.monotonic() + 30
        while "http listening on" not in self.log_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                text = self.log_text()
                Server.close(self)
                raise RuntimeError("no HTTP API:\n" + text)
            time.sleep(0.02)


def settled_session(get_session, history_tokens, timeout_s=10):
    """GetSession (GET_SESSION() -> Session) once a cancelled turn has settled, and whether the
    first answer was not settled yet. A client's cancel (or deadline) ends its call at once, but
    the engine drops the turn only at its next step: until then GetSession shows num_tokens of
    the running turn with the previous turn's last_turn_token_ids. Settled: the session holds
    its history (HISTORY_TOKENS tokens before the turn) plus last_turn_token_ids, or just its
    history (the turn never reached the engine), unchanged over 50 ms."""
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        session = get_session()
        if session.num_tokens in (history_tokens,
                                  history_tokens + len(session.last_turn_token_ids)):
            time.sleep(0.05)
            again = get_session()
            if again == session or time.monotonic() > deadline:
                return again, waited
        elif time.monotonic() > deadline:
            return session, True
        waited = True
        time.sleep(0.01)
