"""The OpenAI-compatible HTTP API of lizard-server (real binary on 127.0.0.1): SSE framing and
error shapes with curl, gRPC-vs-HTTP token equality, session-bearing chat turns that prefill only
the new messages, API keys, 429, drain, a client that does not read, the gateway gauges.

The shipped model has no chat template: the chat tests run on a copy of it (symlinks) with a
tokenizer_config.json holding a ChatML template."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_testing  # noqa: E402

ARGS = None
pb = pbg = None

CHATML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server",
                      "chat_templates", "chatml.jinja")


def model_copy(root, chat_template):
    """A copy of the shipped model (symlinks) named lizard-tiny whose tokenizer_config.json holds
    the ChatML template, or which has none."""
    model = os.path.join(root, "lizard-tiny")
    os.mkdir(model)
    for name in ["config.json", "model.safetensors", "tokenizer.json"]:
        os.symlink(os.path.abspath(os.path.join(ARGS.model, name)), os.path.join(model, name))
    if chat_template:
        with open(CHATML) as f:
            source = f.read()
        with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": source, "bos_token": "<|begin_of_text|>",
                       "eos_token": "<|end_of_text|>"}, f)
    return model


class HttpServer(server_testing.HttpServer):
    """lizard-server with the HTTP API on a free port of 127.0.0.1, and a gRPC stub."""

    def __init__(self, model, *flags):
        super().__init__(ARGS.server, model, *flags)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pbg.LizardStub(self.channel)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def request(self, path, body=None, method=None, headers=None):
        """(status, headers, parsed JSON or text) of one request."""
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                status, head, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, head, raw = error.code, error.headers, error.read()
        text = raw.decode()
        if head.get("Content-Type", "").startswith("application/json"):
            return status, head, json.loads(text)
        return status, head, text

    def curl(self, path, body, *options):
        """curl's output (headers, then the body exactly as received) for a POST."""
        result = subprocess.run(["curl", "-sS", "-N", "-i", "-X", "POST", self.url(path),
                                 "-H", "Content-Type: application/json", "-d", json.dumps(body),
                                 *options], capture_output=True, timeout=60)
        return result.stdout.decode(errors="replace")

    def close(self):
        if hasattr(self, "channel"):
            self.channel.close()
        super().close()


def split_http(raw):
    head, _, body = raw.partition("\r\n\r\n")
    status = int(head.split()[1])
    return status, head, body


def sse_events(body):
    """The data of each event; asserts the framing: every event is `data: ...` + blank line."""
    assert body.endswith("\n\n"), repr(body[-40:])
    events = body[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, repr(event)
    return [event[len("data: "):] for event in events]


GREEDY = {"temperature": 0, "ignore_eos": True}


class OpenAiApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.server = HttpServer(model_copy(cls.tmp.name, chat_template=True))

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.tmp.cleanup()

    def post(self, path, body, **kwargs):
        return self.server.request(path, body, **kwargs)

    def assert_error(self, response, status, param=None, message=None):
        got_status, head, body = response
        self.assertEqual(got_status, status, body)
        self.assertTrue(head["Content-Type"].startswith("application/json"))
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})
        if param is not None:
            self.assertEqual(body["error"]["param"], param)
        if message is not None:
            self.assertIn(message, body["error"]["message"])
        return body["error"]

    def test_models_health_ready(self):
        status, _, models = self.server.request("/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual([m["id"] for m in models["data"]], ["lizard-tiny"])
        self.assertEqual(self.server.request("/health")[0], 200)
        self.assertEqual(self.server.request("/ready")[0], 200)

    def test_completion_matches_grpc(self):
        """The same greedy request gives the same tokens and text on HTTP and gRPC."""
        for prompt in ["Once upon a time", [510, 40, 41, 42]]:
            status, _, body = self.post("/v1/completions", {
                "model": "lizard-tiny", "prompt": prompt, "max_tokens": 12,
                "return_token_ids": True, **GREEDY})
            self.assertEqual(status, 200, body)
            choice = body["choices"][0]
            self.assertEqual(body["object"], "text_completion")
            self.assertEqual(choice["finish_reason"], "length")
            self.assertEqual(len(choice["token_ids"]), 12)
            request = pb.GenerateRequest(
                sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_new_tokens=12, ignore_eos=True))
            if isinstance(prompt, str):
                request.text = prompt
            else:
                request.token_ids.ids.extend(prompt)
            responses = list(self.server.stub.Generate(request))
            self.assertEqual(choice["token_ids"], [t for r in responses for t in r.token_ids])
            self.assertEqual(choice["text"], "".join(r.text for r in responses))
            usage = responses[-1].usage
            # The prefix cache may serve part of the repeated prompt: only the count differs.
            cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
            self.assertTrue(0 <= cached < usage.prompt_tokens, cached)
            self.assertEqual(body["usage"], {"prompt_tokens": usage.prompt_tokens,
                                             "completion_tokens": 12,
                                             "total_tokens": usage.prompt_tokens + 12,
                                             "prompt_tokens_details": {"cached_tokens": cached}})

    def test_sse_framing_with_curl(self):
        request = {"prompt": "Once upon a time", "max_tokens": 10, "stream": True,
                   "stream_options": {"include_usage": True}, **GREEDY}
        status, head, body = split_http(self.server.curl("/v1/completions", request))
        self.assertEqual(status, 200)
        self.assertRegex(head, r"(?i)content-type: text/event-stream")
        events = sse_events(body)
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        usage = chunks[-1]
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 10)
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "length")
        streamed = "".join(c["choices"][0]["text"] for c in chunks[:-1])
        _, _, whole = self.post("/v1/completions", {**request, "stream": False})
        self.assertEqual(streamed, whole["choices"][0]["text"])
        self.assertTrue(all(c["object"] == "text_completion" for c in chunks))

        # Chat: a role delta first, then content deltas, then finish_reason; no usage unasked.
        status, _, body = split_http(self.server.curl("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": True,
            **GREEDY}))
        events = sse_events(body)
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
        self.assertNotIn("usage", chunks[-1])

    def test_error_shapes(self):
        server = self.server
        self.assert_error(server.request("/v1/completions", b"{not json"), 400)
        self.assert_error(self.post("/v1/completions", {"prompt": "x", "n": 2}), 400, "n")
        self.assert_error(self.post("/v1/completions", {"prompt": ["a", "b"]}), 400, "prompt",
                          "several prompts")
        self.assert_error(self.post("/v1/completions", {"prompt": "x", "temperature": "hot"}),
                          400, "temperature")
        # The gRPC path's validation and message.
        self.assert_error(self.post("/v1/completions", {"prompt": "x", "temperature": -1}), 400,
                          message="sampling.temperature = -1 must be >= 0")
        self.assert_error(self.post("/v1/completions", {"prompt": "x", "presence_penalty": 3}),
                          400, message="sampling.presence_penalty = 3 must be in [-2, 2]")
        self.assert_error(self.post("/v1/completions", {"prompt": [1, 99999]}), 400,
                          message="outside the vocabulary")
        self.assert_error(self.post("/v1/completions", {"prompt": "x", "max_tokens": 10**9}),
                          400, message="--max-new-tokens-limit")
        error = self.assert_error(self.post("/v1/completions", {"model": "gpt-4", "prompt": "x"}),
                                  404, "model")
        self.assertEqual(error["code"], "model_not_found")
        self.assert_error(self.post("/v1/chat/completions", {"messages": []}), 400, "messages")
        self.assert_error(self.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}], "session_id": "nope"}), 404)
        self.assert_error(server.request("/v1/nothing"), 404)
        status, head, _ = server.request("/v1/completions")  # GET
        self.assertEqual(status, 405)
        self.assertEqual(head["Allow"], "POST")
        # Bodies need a Content-Length (chunked ones are refused before they are read).
        status, _, body = split_http(server.curl("/v1/completions", {"prompt": "x"},
                                                 "-H", "Transfer-Encoding: chunked"))
        self.assertEqual(status, 400)
        self.assertIn("error", json.loads(body))
        # The same shapes through curl, status line included.
        status, _, body = split_http(server.curl("/v1/completions", {"prompt": "x", "n": 3}))
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["error"]["param"], "n")

    def test_expect_100_continue(self):
        """curl's Expect: 100-continue gets its interim answer before the body is read."""
        status, _, body = split_http(self.server.curl("/v1/completions", {
            "prompt": "x", "max_tokens": 1}, "-H", "Expect: 100-continue"))
        self.assertEqual(status, 100)  # curl -i shows the interim response first
        self.assertIn("HTTP/1.1 200", body)

    def test_chat(self):
        status, _, body = self.post("/v1/chat/completions", {
            "model": "lizard-tiny", "max_completion_tokens": 8, "logprobs": True,
            "top_logprobs": 2, "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Hello"}], **GREEDY})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["object"], "chat.completion")
        choice = body["choices"][0]
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertIsInstance(choice["message"]["content"], str)
        self.assertEqual(len(choice["logprobs"]["content"]), 8)
        self.assertEqual(len(choice["logprobs"]["content"][0]["top_logprobs"]), 2)
        # The prompt is the rendered template with BOS (ChatML does not write one).
        rendered = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                    "<|im_start|>assistant\n")
        ids = self.server.stub.Tokenize(pb.TokenizeRequest(text=rendered,
                                                           add_special_tokens=True)).token_ids
        self.assertEqual(body["usage"]["prompt_tokens"], len(ids))

    def test_session_turn_prefills_only_the_new_messages(self):
        status, _, session = self.post("/v1/sessions", {"ttl_seconds": 60})
        self.assertEqual(status, 200, session)
        sid = session["id"]
        turn1 = [{"role": "system", "content": "You are a lizard."},
                 {"role": "user", "content": "Hi!"}]
        _, _, first = self.post("/v1/chat/completions", {
            "messages": turn1, "session_id": sid, "max_tokens": 5, "return_token_ids": True,
            **GREEDY})
        self.assertEqual(first["session_id"], sid)
        tokenize = lambda text, special: list(self.server.stub.Tokenize(
            pb.TokenizeRequest(text=text, add_special_tokens=special)).token_ids)
        full = tokenize("<|im_start|>system\nYou are a lizard.<|im_end|>\n"
                        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", True)
        self.assertEqual(first["usage"]["prompt_tokens"], len(full))
        # The second turn names the session by header and sends only the new message.
        new = "<|im_start|>user\nWhat do you eat?<|im_end|>\n<|im_start|>assistant\n"
        _, _, second = self.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "What do you eat?"}], "max_tokens": 5,
            "return_token_ids": True, **GREEDY}, headers={"X-Session-Id": sid})
        self.assertEqual(second["usage"]["prompt_tokens"], len(tokenize(new, False)))
        info = self.server.stub.GetSession(pb.GetSessionRequest(session_id=sid))
        self.assertEqual(info.num_tokens, len(full) + 5 + len(tokenize(new, False)) + 5)
        self.assertEqual(list(info.last_turn_token_ids),
                         tokenize(new, False) + second["choices"][0]["token_ids"])
        # The same tokens as a one-shot request of the whole history.
        history = full + first["choices"][0]["token_ids"] + tokenize(new, False)
        one_shot = [t for r in self.server.stub.Generate(pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=history), sampling=pb.SamplingParams(temperature=0),
            stopping=pb.StoppingCriteria(max_new_tokens=5, ignore_eos=True)))
            for t in r.token_ids]
        self.assertEqual(second["choices"][0]["token_ids"], one_shot)
        # Body and header must agree.
        self.assert_error(self.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}], "session_id": sid},
            headers={"X-Session-Id": "other"}), 400, "session_id")

    def test_no_chat_template(self):
        tmp = tempfile.TemporaryDirectory()
        server = HttpServer(model_copy(tmp.name, chat_template=False))
        try:
            self.assert_error(server.request("/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Hi"}]}), 400,
                message="no chat template")
            self.assertEqual(server.request("/v1/completions", {"prompt": "Hi",
                                                                "max_tokens": 2})[0], 200)
        finally:
            server.close()
            tmp.cleanup()
        # --chat-template turns chat on.
        server = HttpServer(ARGS.model, "--chat-template", CHATML)
        try:
            self.assertEqual(server.request("/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})[0], 200)
        finally:
            server.close()

    def test_gateway_gauges(self):
        page = self.server.metrics()
        self.assertRegex(page, r"(?m)^lizard_num_requests_waiting 0$")
        utilization = float(re.search(r"(?m)^lizard_state_pool_utilization (\S+)$", page)[1])
        self.assertTrue(0 <= utilization <= 1)


class OpenAiApiLimitsTest(unittest.TestCase):
    def test_api_keys(self):
        with tempfile.NamedTemporaryFile("w", suffix=".keys") as keys:
            keys.write("secret-key-1\n")
            keys.flush()
            server = HttpServer(ARGS.model, "--api-keys-file", keys.name)
            try:
                for headers in [{}, {"Authorization": "Bearer wrong"}]:
                    status, head, body = server.request("/v1/completions", {"prompt": "x"},
                                                        headers=headers)
                    self.assertEqual(status, 401)
                    self.assertEqual(body["error"]["code"], "invalid_api_key")
                    self.assertNotIn("wrong", body["error"]["message"])
                self.assertEqual(server.request("/v1/models")[0], 401)
                ok = {"Authorization": "Bearer secret-key-1"}
                self.assertEqual(server.request("/v1/completions", {"prompt": "x",
                                                                    "max_tokens": 1},
                                                headers=ok)[0], 200)
                self.assertEqual(server.request("/health")[0], 200)
                self.assertEqual(server.request("/ready")[0], 200)
            finally:
                server.close()

    def test_sessions_full_is_429_and_oversized_body_413(self):
        server = HttpServer(ARGS.model, "--max-sessions", "1", "--http-max-body-bytes", "2048")
        try:
            self.assertEqual(server.request("/v1/sessions", b"", method="POST")[0], 200)
            status, _, body = server.request("/v1/sessions", b"", method="POST")
            self.assertEqual(status, 429)
            self.assertEqual(body["error"]["type"], "rate_limit_error")
            status, _, body = server.request("/v1/completions", {"prompt": "x" * 4000})
            self.assertEqual(status, 413)
            self.assertIn("error", body)
        finally:
            server.close()

    def test_client_that_does_not_read_is_cut(self):
        """The engine never waits: past --stream-buffer-bytes the stream is cut (no [DONE]); a
        client that goes away stops its generation."""
        server = HttpServer(ARGS.model, "--stream-buffer-bytes", str(1 << 20),
                            "--max-new-tokens-limit", "20000")
        try:
            body = json.dumps({"prompt": "x", "max_tokens": 20000, "stream": True,
                               "logprobs": 20, **GREEDY}).encode()
            sock = socket.create_connection(("127.0.0.1", server.http_port))
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(8)  # not reading
            received = b""
            sock.settimeout(30)
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                received += data
            sock.close()
            self.assertNotIn(b"data: [DONE]", received)
            # A non-streaming request whose client goes away is cancelled.
            body = json.dumps({"prompt": "x", "max_tokens": 20000, **GREEDY}).encode()
            sock = socket.create_connection(("127.0.0.1", server.http_port))
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"\r\n" % len(body) + body)
            time.sleep(0.5)
            sock.close()
            deadline = time.monotonic() + 30
            while ('error="the client went away"' not in server.log_text() and
                   time.monotonic() < deadline):
                time.sleep(0.05)
            self.assertRegex(server.log_text(), r"request /v1/completions CANCELLED .*"
                                                r'error="the client went away"')
            # The server still serves.
            self.assertEqual(server.request("/v1/completions", {"prompt": "x",
                                                                "max_tokens": 1})[0], 200)
        finally:
            server.close()

    def test_drain(self):
        """SIGTERM: /ready 503 and new requests 503 while a running stream finishes."""
        server = HttpServer(ARGS.model, "--drain-grace", "60s")
        try:
            proc = subprocess.Popen(
                ["curl", "-sS", "-N", "-X", "POST", server.url("/v1/completions"), "-d",
                 json.dumps({"prompt": "x", "max_tokens": 3000, "stream": True, **GREEDY})],
                stdout=subprocess.PIPE)
            first = proc.stdout.readline()
            self.assertTrue(first.startswith(b"data: "), first)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 10
            while server.request("/ready")[0] != 503 and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(server.request("/ready")[0], 503)
            self.assertEqual(server.request("/v1/completions", {"prompt": "x"})[0], 503)
            rest = proc.communicate(timeout=60)[0]
            self.assertTrue(rest.endswith(b"data: [DONE]\n\n"), rest[-200:])
            self.assertEqual(server.proc.wait(30), 0)
        finally:
            server.close()


if __name__ == "__main__":
    server_testing.run_tests(globals())
