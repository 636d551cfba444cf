#!/usr/bin/python3
"""Integration test of lizard-server with a Python gRPC client (Debian's python3-grpcio).

Stubs are generated at test time into a temporary directory (server_testing.py). Health and
reflection are called with hand-encoded protobuf bytes, so no extra stubs are needed. Usage:

  /usr/bin/python3 test_server.py --server BUILD/server/lizard-server --model MODEL_DIR \
      --proto-dir REPO/proto
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

import server_testing

ARGS = None
pb = pbg = None  # lizard_pb2, lizard_pb2_grpc (generated in main)


class Server(server_testing.Server):
    """lizard-server of the command line, with a channel and a stub."""

    def __init__(self, *flags):
        super().__init__(ARGS.server, ARGS.model, *flags)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pbg.LizardStub(self.channel)

    def health(self):
        return server_testing.health(self.channel)

    def close(self):
        self.channel.close()
        super().close()


def generate(stub, **fields):
    """Runs one Generate; returns (token ids, text, last message)."""
    tokens, text, last = [], "", None
    for response in stub.Generate(pb.GenerateRequest(**fields), timeout=60):
        tokens += list(response.token_ids)
        text += response.text
        last = response
    return tokens, text, last


def greedy(max_new_tokens, **stopping):
    return pb.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True, **stopping)


class LizardServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_streamed_text_and_stop_string(self):
        tokens, text, last = generate(self.stub, text="Once upon a time",
                                      stopping=greedy(40), request_id="py-1")
        self.assertEqual(len(tokens), 40)
        self.assertEqual(last.finish_reason, pb.LENGTH)
        self.assertEqual(last.request_id, "py-1")
        self.assertEqual(last.usage.generated_tokens, 40)
        # A stop string taken from the middle of that text: the output ends right before it.
        stop = text[len(text) // 2: len(text) // 2 + 3]
        self.assertTrue(stop)
        _, stopped_text, stopped_last = generate(self.stub, text="Once upon a time",
                                                 stopping=greedy(40, stop_strings=[stop]))
        self.assertEqual(stopped_last.finish_reason, pb.STOP)
        self.assertEqual(stopped_text, text[:text.find(stop)])

    def test_two_text_turns_equal_one_shot(self):
        session = self.stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=60))
        turn1, _, _ = generate(self.stub, session_id=session.session_id, text="Hello",
                               stopping=greedy(8))
        turn2, _, last = generate(self.stub, session_id=session.session_id, text=" lizard",
                                  stopping=greedy(8))
        first = list(self.stub.Tokenize(pb.TokenizeRequest(text="Hello",
                                                           add_special_tokens=True)).token_ids)
        second = list(self.stub.Tokenize(pb.TokenizeRequest(text=" lizard")).token_ids)
        history = first + turn1 + second
        self.assertEqual(first[0], 510)  # BOS starts a conversation
        one_shot, _, _ = generate(self.stub, token_ids=pb.TokenIds(ids=history),
                                  stopping=greedy(8))
        self.assertEqual(turn2, one_shot)
        self.assertEqual(last.usage.session_tokens, len(history) + 8)
        info = self.stub.GetSession(pb.GetSessionRequest(session_id=session.session_id))
        self.assertEqual(info.num_tokens, len(history) + 8)
        self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id))

    def test_logprobs(self):
        tokens, _, _ = generate(self.stub, token_ids=pb.TokenIds(ids=[1, 2, 3]),
                                stopping=greedy(5), logprobs=4)
        responses = list(self.stub.Generate(pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=[1, 2, 3]), stopping=greedy(5), logprobs=4)))
        entries = [lp for r in responses for lp in r.logprobs]
        self.assertEqual([lp.chosen.token_id for lp in entries], tokens)
        for lp in entries:
            self.assertEqual(len(lp.top), 4)
            self.assertLessEqual(lp.chosen.logprob, 0.0)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(lp.top[0].logprob, lp.chosen.logprob, places=4)

    def test_bad_input(self):
        cases = [
            (dict(text=""), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(token_ids=pb.TokenIds(ids=[512])), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(text="x", sampling=pb.SamplingParams(temperature=-1)),
             grpc.StatusCode.INVALID_ARGUMENT),
            (dict(text="x", sampling=pb.SamplingParams(top_p=2)), grpc.StatusCode.INVALID_ARGUMENT),
            (dict(text="x", stopping=pb.StoppingCriteria(max_new_tokens=10 ** 6)),
             grpc.StatusCode.INVALID_ARGUMENT),
            (dict(text="x", session_id="missing"), grpc.StatusCode.NOT_FOUND),
        ]
        for fields, code in cases:
            with self.assertRaises(grpc.RpcError) as caught:
                generate(self.stub, **fields)
            self.assertEqual(caught.exception.code(), code, fields)
            self.assertTrue(caught.exception.details(), fields)
        # The engine's sampling ranges, checked once, with the request's field path: OpenAI's
        # [-2, 2] for presence_penalty (once refused only by the engine, without the path).
        with self.assertRaises(grpc.RpcError) as caught:
            generate(self.stub, text="x", sampling=pb.SamplingParams(presence_penalty=3))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("sampling.presence_penalty = 3 must be in [-2, 2]",
                      caught.exception.details())
        # Malformed UTF-8 cannot be built with a Python str: send raw bytes (field 2 = text).
        raw = self.server.channel.unary_stream("/lizard.v1.Lizard/Generate",
                                               request_serializer=lambda b: b,
                                               response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as caught:
            list(raw(b"\x12\x03a\xff\xfe", timeout=10))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("UTF-8", caught.exception.details())
        # Still serving.
        tokens, _, _ = generate(self.stub, text="still there?", stopping=greedy(3))
        self.assertEqual(len(tokens), 3)

    def test_health_and_reflection(self):
        self.assertEqual(self.server.health(), "SERVING")
        reflect = self.server.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        # ServerReflectionRequest{list_services: ""} is field 7, length-delimited.
        answer = b"".join(reflect(iter([b"\x3a\x00"]), timeout=10))
        self.assertIn(b"lizard.v1.Lizard", answer)
        self.assertIn(b"grpc.health.v1.Health", answer)

    def test_model_info(self):
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest())
        self.assertEqual(info.vocab_size, 512)
        self.assertEqual(len(info.layer_types), info.num_layers)
        self.assertGreater(info.state_bytes_per_session, 0)
        # The backend the server was started on: cpu unless LIZARD_TEST_SERVER_FLAGS says otherwise.
        flags = os.environ.get("LIZARD_TEST_SERVER_FLAGS", "").split()
        expected = flags[flags.index("--backend") + 1] if "--backend" in flags else "cpu"
        self.assertEqual(info.backend, expected)
        self.assertGreater(info.capacity.device_state_slots, 0)

    def test_metrics_contract(self):
        generate(self.stub, text="metrics", stopping=greedy(4))
        page = self.server.metrics()
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M))
        expected = {
            "lizard_requests_total": "counter",
            "lizard_prompt_tokens_total": "counter",
            "lizard_generated_tokens_total": "counter",
            "lizard_time_to_first_token_seconds": "histogram",
            "lizard_inter_token_latency_seconds": "histogram",
            "lizard_request_duration_seconds": "histogram",
            "lizard_queue_depth": "gauge",
            "lizard_running_sequences": "gauge",
            "lizard_sessions": "gauge",
            "lizard_batch_size": "histogram",
            "lizard_batch_tokens": "histogram",
            "lizard_step_duration_seconds": "histogram",
            "lizard_state_slots": "gauge",
            "lizard_state_evictions_total": "counter",
            "lizard_state_restores_total": "counter",
            "lizard_device_memory_bytes": "gauge",
        }
        for name, kind in expected.items():
            self.assertEqual(types.get(name), kind, name)
        self.assertRegex(page, r'lizard_requests_total\{code="OK",rpc="Generate"\} [1-9]')
        for location in ("device", "host"):
            for state in ("used", "free"):
                self.assertIn(f'lizard_state_slots{{location="{location}",state="{state}"}}',
                              page)
        for kind in ("total", "used", "weights", "state_pool"):
            self.assertIn(f'lizard_device_memory_bytes{{kind="{kind}"}}', page)
        self.assertRegex(page, r"lizard_time_to_first_token_seconds_count [1-9]")


class NoTokenizerTest(unittest.TestCase):
    """A hybrid (lizard/softmax/lizard) model made by tools/make_model.py, without tokenizer.json."""

    def test_token_ids_only(self):
        with tempfile.TemporaryDirectory() as model:
            make_model = os.path.join(ARGS.proto_dir, "..", "tools", "make_model.py")
            subprocess.run([sys.executable, make_model, "--out", model, "--preset", "tiny-hybrid",
                            "--seed", "3"], check=True)
            server = Server("--model", model)
            try:
                stub = server.stub
                info = stub.GetModelInfo(pb.GetModelInfoRequest())
                self.assertFalse(info.has_tokenizer)
                self.assertEqual(list(info.layer_types), [pb.LIZARD, pb.SOFTMAX, pb.LIZARD])
                self.assertGreater(info.kv_bytes_per_token, 0)
                for call in (lambda: generate(stub, text="hi", stopping=greedy(2)),
                             lambda: stub.Tokenize(pb.TokenizeRequest(text="hi"))):
                    with self.assertRaises(grpc.RpcError) as caught:
                        call()
                    self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
                session = stub.CreateSession(pb.CreateSessionRequest(
                    token_ids=pb.TokenIds(ids=[1, 2, 3, 4, 5])))
                turn1, text, _ = generate(stub, session_id=session.session_id,
                                          token_ids=pb.TokenIds(ids=[6, 7]), stopping=greedy(6))
                self.assertEqual(text, "")
                turn2, _, _ = generate(stub, session_id=session.session_id,
                                       token_ids=pb.TokenIds(ids=[8]), stopping=greedy(6))
                one_shot, _, _ = generate(
                    stub, token_ids=pb.TokenIds(ids=[1, 2, 3, 4, 5, 6, 7] + turn1 + [8]),
                    stopping=greedy(6))
                self.assertEqual(turn2, one_shot)
            finally:
                server.close()


class DrainTest(unittest.TestCase):
    def test_sigterm_drains(self):
        server = Server("--drain-grace", "30s")
        try:
            result = {}
            first_message = threading.Event()

            def stream():
                tokens, last = 0, None
                for response in server.stub.Generate(pb.GenerateRequest(
                        text="long story", stopping=greedy(1500)), timeout=60):
                    tokens += len(response.token_ids)
                    last = response
                    first_message.set()
                result["tokens"], result["last"] = tokens, last

            reader = threading.Thread(target=stream)
            reader.start()
            self.assertTrue(first_message.wait(30))
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 10
            while server.health() != "NOT_SERVING" and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(server.health(), "NOT_SERVING")
            with self.assertRaises(grpc.RpcError) as caught:
                generate(server.stub, text="too late", stopping=greedy(2))
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
            reader.join(60)
            self.assertEqual(result["tokens"], 1500)
            self.assertEqual(result["last"].finish_reason, pb.LENGTH)
            self.assertEqual(server.proc.wait(30), 0)
        finally:
            server.close()


if __name__ == "__main__":
    server_testing.unittest_main(globals())
