#!/usr/bin/python3
"""The automatic prefix cache through the real server: a request that re-sends an earlier
conversation (gRPC Generate, OpenAI completions and chat without a session) reports the tokens it
did not prefill as cached_tokens, gets the same tokens as a server without the cache (also when
the entry is on the host tier and is restored into the new state while another stream decodes),
and the cache's Prometheus metrics count it. Usage:

  /usr/bin/python3 test_prefix_cache.py --server BIN --model DIR --proto-dir DIR
"""
import json
import os
import re
import unittest
import urllib.error
import urllib.request

import grpc

import server_testing

ARGS = None
pb = pbg = None  # lizard_pb2, lizard_pb2_grpc (generated in main)


def generate(stub, **fields):
    """Runs one Generate; returns (token ids, last message)."""
    tokens, last = [], None
    for response in stub.Generate(pb.GenerateRequest(**fields), timeout=60):
        tokens += list(response.token_ids)
        last = response
    return tokens, last


def metric(page, name):
    """The sum of a metric's samples on a /metrics page."""
    return sum(float(m) for m in re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % name, page, re.M))


class PrefixCacheTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.servers = {}
        chatml = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server",
                              "chat_templates", "chatml.jinja")
        # "small": two device slots, so while a long stream holds one, every cache entry is on the
        # host and each hit is copied into the new state by a restore beside that stream.
        for name, flags in [("on", ["--chat-template", chatml]),
                            ("off", ["--prefix-cache-bytes", "0"]),
                            ("small", ["--device-state-slots", "2", "--spill-ahead-slots", "1",
                                       "--max-new-tokens-limit", "1000000"])]:
            server = server_testing.HttpServer(ARGS.server, ARGS.model, *flags)
            server.channel = grpc.insecure_channel(server.address)
            server.stub = pbg.LizardStub(server.channel)
            cls.servers[name] = server

    @classmethod
    def tearDownClass(cls):
        for server in cls.servers.values():
            server.channel.close()
            server.close()

    def post(self, server, path, body):
        """The JSON answer of an HTTP API request (no model name: the server's model)."""
        request = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (server.http_port, path), data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            self.fail("%s: %d %s" % (path, error.code, error.read().decode()))

    def test_grpc_turns_hit_and_match_a_server_without_cache(self):
        on, off = self.servers["on"], self.servers["off"]
        history = list(range(40, 80))
        stopping = pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True)
        for turn in range(3):
            history += [100 + turn, 7, 200 + turn]
            tokens, last = generate(on.stub, token_ids=pb.TokenIds(ids=history), stopping=stopping)
            cold, cold_last = generate(off.stub, token_ids=pb.TokenIds(ids=history),
                                       stopping=stopping)
            self.assertEqual(tokens, cold)
            self.assertEqual(cold_last.usage.cached_tokens, 0)
            if turn > 0:
                # Everything the previous turn's state consumed: all but its last token (pending)
                # and the 3 new ones.
                self.assertEqual(last.usage.cached_tokens, len(history) - 4)
            history += tokens
        page = on.metrics()
        self.assertGreaterEqual(metric(page, "lizard_prefix_cache_hits_total"), 2)
        self.assertGreaterEqual(metric(page, "lizard_prefix_cache_queries_total"), 3)
        self.assertGreater(metric(page, "lizard_prefix_cache_hit_tokens_total"), 0)
        self.assertGreater(metric(page, "lizard_prefix_cache_entries"), 0)
        self.assertGreater(metric(page, "lizard_prefix_cache_bytes"), 0)
        self.assertIn('lizard_prefix_cache_entries{tier="host"}', page)
        self.assertIn("lizard_prefix_cache_evictions_total 0", page)
        off_page = off.metrics()
        self.assertEqual(metric(off_page, "lizard_prefix_cache_queries_total"), 0)
        self.assertEqual(metric(off_page, "lizard_prefix_cache_entries"), 0)

    def test_hits_from_the_host_tier_match_a_server_without_cache(self):
        small, off = self.servers["small"], self.servers["off"]
        # A long stream on one slot for the whole conversation (cancelled at the end).
        long_stream = small.stub.Generate(
            pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5, 6, 7]),
                               stopping=pb.StoppingCriteria(max_new_tokens=1000000, ignore_eos=True)),
            timeout=120)
        next(long_stream)
        history = list(range(10, 50))
        stopping = pb.StoppingCriteria(max_new_tokens=6, ignore_eos=True)
        for turn in range(4):
            history += [120 + turn, 9]
            tokens, last = generate(small.stub, token_ids=pb.TokenIds(ids=history), stopping=stopping)
            cold, _ = generate(off.stub, token_ids=pb.TokenIds(ids=history), stopping=stopping)
            self.assertEqual(tokens, cold, "turn %d" % turn)
            if turn > 0:
                # All but the previous turn's last token (pending) and the 2 new ones.
                self.assertEqual(last.usage.cached_tokens, len(history) - 3, "turn %d" % turn)
            history += tokens
        self.assertTrue(long_stream.running())  # so every hit above came from the host tier
        long_stream.cancel()
        page = small.metrics()
        self.assertGreaterEqual(metric(page, "lizard_prefix_cache_hits_total"), 3)
        host = re.search(r'^lizard_prefix_cache_entries\{tier="host"\} (\S+)$', page, re.M)
        self.assertIsNotNone(host)
        self.assertGreater(float(host.group(1)), 0)

    def test_openai_usage_reports_cached_tokens(self):
        on = self.servers["on"]
        prompt = "Once upon a time there was a lizard who lived in a garden."
        first = self.post(on, "/v1/completions",
                          {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        self.assertEqual(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        again = self.post(on, "/v1/completions",
                          {"prompt": prompt + " It liked the sun.", "max_tokens": 8,
                           "temperature": 0})
        self.assertGreater(again["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertLess(again["usage"]["prompt_tokens_details"]["cached_tokens"],
                        again["usage"]["prompt_tokens"])

        messages = [{"role": "system", "content": "You are a lizard."},
                    {"role": "user", "content": "Hi!"}]
        chat = self.post(on, "/v1/chat/completions",
                         {"messages": messages, "max_tokens": 8, "temperature": 0})
        messages += [chat["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        chat2 = self.post(on, "/v1/chat/completions",
                          {"messages": messages, "max_tokens": 8, "temperature": 0})
        self.assertGreater(chat2["usage"]["prompt_tokens_details"]["cached_tokens"], 0)


if __name__ == "__main__":
    server_testing.unittest_main(globals())
