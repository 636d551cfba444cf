#!/usr/bin/python3
"""Session affinity across two lizard-server replicas behind the haproxy config of deploy/proxy/.

Starts two replicas on 127.0.0.1 and haproxy in front of them, then checks that
  * every turn of several sessions reaches the replica that holds the session (the turns succeed,
    exactly one replica knows each session, and each replica's Generate counter grew by exactly
    the turns of the sessions it holds), and
  * one-shot requests without a routing key are spread over both replicas.

Usage: session_affinity_test.py LIZARD_SERVER MODEL_DIR
Needs /usr/bin/python3 with Debian's python3-grpcio, protoc and grpc_python_plugin
(protobuf-compiler, protobuf-compiler-grpc) and haproxy on PATH.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "server"))
import server_testing  # noqa: E402  (the server process and stub helpers of tests/server)

RPC_TIMEOUT_S = 30
STARTUP_TIMEOUT_S = 120
SESSIONS = 8
TURNS_PER_SESSION = 3
ONE_SHOTS = 10


def generate_counts(replica):
    """Sum of lizard_requests_total over codes for the Generate rpc, read from /metrics."""
    total = 0.0
    for line in replica.metrics().splitlines():
        if not line.startswith("lizard_requests_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        rpc = re.search(r'rpc="([^"]*)"', labels)
        if rpc and rpc.group(1).split("/")[-1] == "Generate":
            total += float(value)
    return total


class SessionAffinityTest(unittest.TestCase):
    server = None
    model = None

    @classmethod
    def setUpClass(cls):
        import grpc
        cls.grpc = grpc
        cls.tmp = tempfile.mkdtemp(prefix="lizard-affinity-")
        cls.pb, cls.pb_grpc = server_testing.generate_stubs(os.path.join(REPO, "proto"), cls.tmp)
        cls.replicas = []
        cls.proxy = None
        try:
            for i in range(2):
                cls.replicas.append(server_testing.Server(
                    cls.server, cls.model, "--backend=cpu", "--threads=1",
                    startup_timeout_s=STARTUP_TIMEOUT_S))
            cls.proxy_port = cls.start_proxy()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.proxy is not None and cls.proxy.poll() is None:
            cls.proxy.terminate()
            cls.proxy.wait()
        for replica in cls.replicas:
            replica.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def start_proxy(cls):
        port = server_testing.free_port()
        servers = ["server replica%d %s" % (i, r.address) for i, r in enumerate(cls.replicas)]
        config = subprocess.run([os.path.join(REPO, "deploy", "proxy", "render.sh"),
                                 "127.0.0.1:%d" % port] + servers,
                                check=True, capture_output=True, text=True).stdout
        config_path = os.path.join(cls.tmp, "haproxy.cfg")
        with open(config_path, "w") as f:
            f.write(config)
        log_path = os.path.join(cls.tmp, "haproxy.log")
        with open(log_path, "w") as log:
            cls.proxy = subprocess.Popen(["haproxy", "-db", "-f", config_path], stdout=log,
                                         stderr=subprocess.STDOUT)
        # Ready once it accepts connections.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if cls.proxy.poll() is not None:
                with open(log_path, errors="replace") as log:
                    raise RuntimeError("haproxy exited:\n" + log.read())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("haproxy did not start listening")

    def stub(self, port):
        channel = self.grpc.insecure_channel("127.0.0.1:%d" % port)
        self.addCleanup(channel.close)
        return self.pb_grpc.LizardStub(channel)

    def generate(self, stub, metadata, session_id=""):
        # Token ids, not text: the test needs no tokenizer.
        request = self.pb.GenerateRequest(session_id=session_id,
                                          token_ids=self.pb.TokenIds(ids=[1, 2, 3]))
        request.sampling.temperature = 0
        request.stopping.max_new_tokens = 2
        responses = list(stub.Generate(request, metadata=metadata, timeout=RPC_TIMEOUT_S))
        self.assertTrue(responses)
        return responses

    def counts(self):
        return [generate_counts(r) for r in self.replicas]

    def growth(self, before, expected_total):
        """Per-replica growth of the Generate counters since `before`. A server may count a
        request just after its last message reached the client, so wait briefly for the total."""
        deadline = time.monotonic() + 10
        while True:
            grown = [a - b for a, b in zip(self.counts(), before)]
            if sum(grown) >= expected_total or time.monotonic() > deadline:
                return grown
            time.sleep(0.1)

    def holder(self, session_id):
        """Index of the one replica that knows the session (asked directly, not via the proxy)."""
        holders = []
        for index, replica in enumerate(self.replicas):
            try:
                self.stub(replica.port).GetSession(
                    self.pb.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
                holders.append(index)
            except self.grpc.RpcError as error:
                self.assertEqual(error.code(), self.grpc.StatusCode.NOT_FOUND)
        self.assertEqual(len(holders), 1, "session %s held by %s" % (session_id, holders))
        return holders[0]

    def test_session_turns_stay_on_their_replica(self):
        proxy = self.stub(self.proxy_port)
        before = self.counts()
        turns = [0, 0]
        for k in range(SESSIONS):
            # The routing key is the client's choice, sent from CreateSession on.
            metadata = (("session-id", "conversation-%d" % k),)
            session = proxy.CreateSession(self.pb.CreateSessionRequest(), metadata=metadata,
                                          timeout=RPC_TIMEOUT_S)
            for _ in range(TURNS_PER_SESSION):
                # A turn routed to the wrong replica fails with NOT_FOUND.
                self.generate(proxy, metadata, session.session_id)
            turns[self.holder(session.session_id)] += TURNS_PER_SESSION
            proxy.DeleteSession(self.pb.DeleteSessionRequest(session_id=session.session_id),
                                metadata=metadata, timeout=RPC_TIMEOUT_S)
        print("session turns per replica:", turns)
        self.assertEqual(self.growth(before, sum(turns)), turns)
        # The keys above are fixed and the hash ring is deterministic: both replicas get some.
        self.assertTrue(all(turns), "all sessions landed on one replica: %s" % turns)

    def test_one_shot_requests_spread_over_replicas(self):
        proxy = self.stub(self.proxy_port)
        before = self.counts()
        for _ in range(ONE_SHOTS):
            self.generate(proxy, metadata=())
        grown = self.growth(before, ONE_SHOTS)
        print("one-shot requests per replica:", grown)
        self.assertEqual(sum(grown), ONE_SHOTS)
        self.assertTrue(all(grown), "one-shot requests did not spread: %s" % grown)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for tool in ("haproxy", "protoc", "grpc_python_plugin"):
        if shutil.which(tool) is None:
            print("SKIP: %s not found (apt-get install haproxy protobuf-compiler-grpc)" % tool)
            sys.exit(77)  # ctest's SKIP_RETURN_CODE
    SessionAffinityTest.server = os.path.abspath(sys.argv[1])
    SessionAffinityTest.model = os.path.abspath(sys.argv[2])
    unittest.main(argv=sys.argv[:1], verbosity=2)
