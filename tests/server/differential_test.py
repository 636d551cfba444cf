#!/usr/bin/python3
"""Randomized differential test of lizard-server (issue 10, deliverable 2).

Several client threads send a random, seeded workload to one server with a small
--max-batch-tokens and tiny state pools (2 device slots, a host tier of a few states, so idle
sessions spill and the pools fill): one-shots and session turns with text or token-id input of
1 to several times --max-batch-tokens tokens, max_new_tokens 0..N, logprobs, stop strings,
greedy, seeded and unseeded sampling, forks, deletes, client cancels and short deadlines.

Then every result is checked against an oracle:
  - a completed greedy or seeded request must equal the same request run alone on a FRESH
    server (a new lizard-server process per request, same numerics flags, the default
    --max-batch-tokens): token ids, text, finish reason, usage, logprobs (within 1e-4: a
    prefix-cache hit, or a session turn's generated tokens fed back as decodes, agree with the
    reference's prompt path within float tolerance only). A session turn's reference is a one-shot over the session's
    history (all turns' last_turn_token_ids concatenated) plus the turn's input, so every turn
    also checks the session state that the earlier turns, forks, spills and cancels left;
    at the end every live session gets one more greedy turn, so its final state is checked too;
  - a cancelled greedy or seeded request must have received a prefix of the reference, and a
    cancelled session turn must report (last_turn_token_ids) its input, then the received
    tokens, then possibly a few more, all a prefix of the reference;
  - no call may end INTERNAL or UNKNOWN (or any status outside the expected ones);
    RESOURCE_EXHAUSTED only while the state pools can really be full (counted and reported);
  - at the end the server is healthy, holds no session and no state, and its /metrics counters
    match what the clients saw.

Reproduce a run with its printed seed: the workload of each thread is drawn from its own RNG,
so the same seed sends the same requests (their interleaving depends on timing). Usage:

  /usr/bin/python3 differential_test.py --server BUILD/server/lizard-server \
      --model MODEL_DIR --proto-dir REPO/proto [--seed S] [--requests N] [--duration SECONDS]
"""
import argparse
import collections
import queue
import random
import re
import sys
import tempfile
import threading
import time
import traceback

import grpc

import server_testing

pb = pbg = None  # lizard_pb2, lizard_pb2_grpc (generated in main)

OK = grpc.StatusCode.OK
CANCEL_CODES = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
WORDS = ("the lizard sat on a warm rock and looked at the sun , then it ran away ! "
         "what do you eat ? insects , leaves and ö ü é 🦎 ; 12 34 \n").split(" ")


class Failures:
    """Collects failures (a test fails on any) with enough context to reproduce them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, what, **context):
        with self.lock:
            self.items.append((what, context))
            if len(self.items) <= 30:
                print("FAIL:", what, flush=True)
                for key, value in context.items():
                    print("   ", key, value if key == "trace" else _short(value), flush=True)


def _short(value, limit=400):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def numerics_flags(args):
    """Flags that decide a request's numbers: the same for the server under test and references.
    Not --max-batch-tokens: prompts are cut only at multiples of 64 tokens, so the step budget
    must not change a request's numbers (the references run with the default budget)."""
    return ["--threads", str(args.threads)]


class ReferencePool:
    """Fresh lizard-server processes, each used for one request alone, then killed. A few are
    started ahead in the background so a check rarely waits for a startup."""

    def __init__(self, args, ahead):
        self.args = args
        self.ready = queue.Queue()
        self.wanted = threading.Semaphore(ahead)
        self.stopping = False
        self.started = 0
        self.thread = threading.Thread(target=self._starter, daemon=True)
        self.thread.start()

    def _starter(self):
        while True:
            self.wanted.acquire()
            if self.stopping:
                return
            try:
                server = server_testing.Server(self.args.server, self.args.model,
                                               *numerics_flags(self.args))
                self.started += 1
                self.ready.put(server)
            except Exception as e:  # noqa: BLE001 - reported by run()
                self.ready.put(e)

    def run(self, request):
        """The Stream of REQUEST run alone on a fresh server."""
        server = self.ready.get()
        self.wanted.release()
        if isinstance(server, Exception):
            raise server
        channel = grpc.insecure_channel(server.address)
        try:
            return collect(pbg.LizardStub(channel).Generate(request, timeout=120), Stream())
        finally:
            channel.close()
            server.close()

    def close(self):
        self.stopping = True
        self.wanted.release()
        self.thread.join(60)
        while not self.ready.empty():
            server = self.ready.get()
            if not isinstance(server, Exception):
                server.close()


class Stream:
    """What a client read of a Generate stream."""

    def __init__(self):
        self.tokens, self.text, self.last, self.logprobs = [], "", None, []


def collect(responses, into, cancel_after=None, cancel=None):
    """Reads a Generate stream into INTO (a Stream), message by message, so what arrived
    before an error stays there. With cancel_after, calls CANCEL() after that many messages
    (an RpcError that follows propagates)."""
    for n, response in enumerate(responses, 1):
        into.tokens += list(response.token_ids)
        into.text += response.text
        into.logprobs += list(response.logprobs)
        into.last = response
        if n == cancel_after:
            cancel()
    return into


class Outcome(Stream):
    """What a client saw of one Generate."""

    def __init__(self, request, kind):
        super().__init__()
        self.request = request    # the GenerateRequest as sent
        self.kind = kind          # "oneshot" | "turn"
        self.code = None
        self.details = ""
        self.cancel = None        # None | "client" | "deadline"
        self.history = None       # turn: the session's tokens before the turn
        self.turn = None          # turn: GetSession.last_turn_token_ids after it
        self.turn_input = None    # turn: GetSession.last_turn_input_tokens
        self.probe = False        # turn: the final check of a session's state
        self.deleted = False      # turn: its session was deleted while it ran


class Workload:
    def __init__(self, args, server, stub, info, failures):
        self.args = args
        self.server = server
        self.stub = stub
        self.info = info
        self.failures = failures
        self.lock = threading.Lock()
        self.calls = collections.Counter()  # (rpc, code name) as the clients saw them
        self.exhausted = collections.Counter()  # rpc -> RESOURCE_EXHAUSTED answers
        self.outcomes = []
        self.live_sessions = 0  # created and not deleted (client's view)
        self.unsettled_after_cancel = 0  # GetSession showed a cancelled turn still running
        self.in_flight = 0      # calls that may hold a state right now
        self.sessions = {}      # session id -> history (owned by one thread at a time)
        self.prompt_tokens = [0, 0]     # known, upper bound of the unknown part
        self.generated_tokens = [0, 0]
        self.deadline = time.monotonic() + args.duration
        self.remaining = args.requests

    # --- bookkeeping ---
    def count(self, rpc, code):
        with self.lock:
            self.calls[(rpc, code.name)] += 1
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                self.failures.add("call ended %s" % code.name, rpc=rpc)

    def take_request(self):
        with self.lock:
            if self.remaining <= 0 or time.monotonic() > self.deadline:
                return False
            self.remaining -= 1
            return True

    def note_exhausted(self, rpc, details):
        """RESOURCE_EXHAUSTED is allowed only when the pools are really full: the host tier,
        by the numbers the server reports, has no room for one more state, and the states the
        clients may hold (live sessions, calls in flight, this one) fill the device slots and
        the states the host holds (whose bytes also hold their sessions' pending tokens)."""
        with self.lock:
            self.exhausted[rpc] += 1
            holders = self.live_sessions + self.in_flight + 1
        m = re.search(r"host tier has no room \((\d+) of (\d+) bytes used\)", details)
        state_bytes = self.info.state_bytes_per_session
        if rpc == "ForkSession" and "no room for the forked state on device or host" in details:
            # The same condition; the message has no numbers to check.
            if holders < self.info.capacity.device_state_slots:
                self.failures.add("ForkSession found no room with free device slots",
                                  details=details, holders=holders)
        elif m is None:
            self.failures.add("RESOURCE_EXHAUSTED for another reason than full state pools",
                              rpc=rpc, details=details)
        # (A spilled state's bytes also hold its pending tokens: up to one more state's worth
        # of slack.)
        elif (int(m[2]) - int(m[1]) >= 2 * state_bytes or holders <
              self.info.capacity.device_state_slots + int(m[1]) // state_bytes):
            self.failures.add("RESOURCE_EXHAUSTED with free state slots", rpc=rpc,
                              details=details, live_sessions=self.live_sessions,
                              in_flight=self.in_flight)

    def call(self, rpc, fn, *, allowed=(), sessions=0):
        """Runs a unary call; returns (response or None, code). Codes other than OK,
        RESOURCE_EXHAUSTED and ALLOWED are failures. SESSIONS: live sessions it adds when OK
        (counted before the call leaves in_flight, so a state is always in one of the two)."""
        with self.lock:
            self.in_flight += 1
        response, code, details = None, grpc.StatusCode.UNKNOWN, ""
        try:
            response, code = fn(), OK
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        finally:
            with self.lock:
                self.in_flight -= 1
                if code == OK:
                    self.live_sessions += sessions
        self.count(rpc, code)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.note_exhausted(rpc, details)
        elif code != OK and code not in allowed:
            self.failures.add("%s ended %s" % (rpc, code.name), details=details)
        return response, code

    # --- random requests ---
    def random_input(self, rng, allow_empty_session_text=False):
        """A GenerateRequest input: {"text": ...} or {"token_ids": ...}, 1 to several times
        --max-batch-tokens tokens (mostly short)."""
        limit = self.args.max_batch_tokens * self.args.prompt_factor
        length = rng.choice([rng.randint(1, 8), rng.randint(1, self.args.max_batch_tokens),
                             rng.randint(1, limit)])
        if rng.random() < 0.5:
            return {"token_ids": pb.TokenIds(ids=[rng.randrange(0, self.info.bos_token_id)
                                                  for _ in range(length)])}
        # Text: roughly a token per character or two on the tiny tokenizer.
        words, size = [], 0
        while size < length:
            word = rng.choice(WORDS)
            words.append(word)
            size += len(word) + 1
        return {"text": " ".join(words)[:max(1, length)]}

    def random_generate_fields(self, rng, penalties=False):
        """Sampling, stopping and logprobs of a Generate. PENALTIES: also repetition, presence
        and frequency penalties (one-shots only: they look at the request's own input, so a
        session turn and the one-shot over its history would legitimately differ)."""
        sampling = {}
        mode = rng.choices(["greedy", "seeded", "unseeded"], [5, 4, 1])[0]
        if penalties and rng.random() < 0.3:
            sampling["repetition_penalty"] = rng.choice([0.8, 1.1, 1.5])
            sampling["presence_penalty"] = rng.choice([0.0, 0.5])
            sampling["frequency_penalty"] = rng.choice([0.0, 0.3])
        if mode != "greedy":
            sampling["temperature"] = rng.choice([0.5, 0.8, 1.0, 1.3])
            if rng.random() < 0.5:
                sampling["top_p"] = rng.choice([0.5, 0.9, 1.0])
            if rng.random() < 0.5:
                sampling["top_k"] = rng.choice([1, 5, 40])
            if rng.random() < 0.2:
                sampling["min_p"] = 0.05
            if mode == "seeded":
                sampling["seed"] = rng.randrange(2 ** 63)
        stopping = {"max_new_tokens": rng.choice([0, 1, 2, rng.randint(0, self.args.max_new),
                                                  self.args.max_new]),
                    "ignore_eos": rng.random() < 0.7}
        if rng.random() < 0.25:
            stopping["stop_strings"] = rng.sample(["e", " t", "a", "st", "\n", "🦎", "xyz"],
                                                  rng.randint(1, 2))
        fields = {"sampling": pb.SamplingParams(**sampling),
                  "stopping": pb.StoppingCriteria(**stopping),
                  "request_id": "r%d" % rng.randrange(10 ** 6)}
        if rng.random() < 0.3:
            fields["logprobs"] = rng.choice([1, 3, 8])
        return fields, mode

    def random_cancel(self, rng, can_delete):
        """(None | "client" | "deadline" | "delete" (the session, while the turn runs),
        messages before the cancel, timeout in seconds)."""
        r = rng.random()
        if r < 0.08:
            return "client", rng.randint(1, 4), 120
        if r < 0.14:
            return "deadline", None, rng.choice([0.005, 0.02, 0.05, 0.1, 0.3])
        if can_delete and r < 0.18:
            return "delete", rng.randint(1, 4), 120
        return None, None, 120

    # --- calls ---
    def generate(self, rng, request, kind, may_cancel=True, delete_session=None):
        """Runs a Generate, maybe cancelled (or its session deleted by DELETE_SESSION())."""
        outcome = Outcome(request, kind)
        outcome.cancel, cancel_after, timeout = (
            self.random_cancel(rng, delete_session is not None) if may_cancel
            else (None, None, 120))
        if outcome.cancel:  # long enough to be cut
            request.stopping.max_new_tokens = rng.randint(100, 1000)
        with self.lock:
            self.in_flight += 1
        try:
            call = self.stub.Generate(request, timeout=timeout)
            collect(call, outcome, cancel_after,
                    delete_session if outcome.cancel == "delete" else call.cancel)
            outcome.code = OK
        except grpc.RpcError as e:  # outcome keeps what arrived before
            outcome.code, outcome.details = e.code(), e.details()
        finally:
            with self.lock:
                self.in_flight -= 1
        self.count("Generate", outcome.code)
        if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.note_exhausted("Generate", outcome.details)
        elif outcome.code in CANCEL_CODES and outcome.cancel is None:
            self.failures.add("Generate ended %s without a cancel" % outcome.code.name,
                              details=outcome.details, request=request)
        elif outcome.code not in CANCEL_CODES and outcome.code != OK:
            self.failures.add("Generate ended %s" % outcome.code.name, details=outcome.details,
                              request=request)
        with self.lock:
            self.outcomes.append(outcome)
        return outcome

    def one_shot(self, rng):
        fields, _ = self.random_generate_fields(rng, penalties=True)
        self.generate(rng, pb.GenerateRequest(**self.random_input(rng), **fields), "oneshot")

    def tokenize(self, text, bos):
        response, code = self.call("Tokenize", lambda: self.stub.Tokenize(
            pb.TokenizeRequest(text=text, add_special_tokens=bos), timeout=30))
        return list(response.token_ids) if code == OK else None

    def expected_input(self, fields, history):
        """The input tokens the session must keep: token ids as given, text tokenized with BOS
        when it starts the conversation."""
        if "token_ids" in fields:
            return list(fields["token_ids"].ids)
        return self.tokenize(fields["text"], bos=not history)

    def get_session(self, sid):
        session, code = self.call("GetSession", lambda: self.stub.GetSession(
            pb.GetSessionRequest(session_id=sid), timeout=30))
        return session if code == OK else None

    def check_session_size(self, sid, history, what):
        session = self.get_session(sid)
        if session is not None and session.num_tokens != len(history):
            self.failures.add("session size differs from its history after " + what,
                              num_tokens=session.num_tokens, history=len(history))
        return session

    def create_session(self, rng, owned):
        fields = {}
        if rng.random() < 0.6:
            fields.update(self.random_input(rng))
        if rng.random() < 0.5:
            fields["ttl_seconds"] = 600
        session, code = self.call("CreateSession", lambda: self.stub.CreateSession(
            pb.CreateSessionRequest(**fields), timeout=120), sessions=1)
        if code != OK:
            return
        history = list(session.last_turn_token_ids)
        if "token_ids" in fields or "text" in fields:
            expected = self.expected_input(fields, [])
            if expected is not None and history != expected:
                self.failures.add("CreateSession kept another prefix", expected=expected,
                                  kept=history)
            with self.lock:
                self.prompt_tokens[0] += len(history)
        if session.num_tokens != len(history) or session.last_turn_input_tokens != len(history):
            self.failures.add("CreateSession: num_tokens/last_turn differ",
                              num_tokens=session.num_tokens, last_turn=len(history))
        owned[session.session_id] = history

    def turn(self, rng, owned, sid, probe=False):
        history = owned[sid]
        if probe:  # a short greedy continuation that checks the final state
            input_fields = {"token_ids": pb.TokenIds(ids=[rng.randrange(self.info.bos_token_id)])}
            fields = {"stopping": pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True)}
        else:
            input_fields = self.random_input(rng)
            fields, _ = self.random_generate_fields(rng)
        request = pb.GenerateRequest(session_id=sid, **input_fields, **fields)
        outcome = self.generate(rng, request, "turn", may_cancel=not probe,
                                delete_session=lambda: self.delete(owned, sid))
        outcome.probe = probe
        outcome.history = list(history)
        if sid not in owned:  # deleted while the turn ran: the stream ended early
            self.deleted_turn(outcome, sid, self.expected_input(input_fields, history))
        elif outcome.code == OK or outcome.code in CANCEL_CODES:
            session = self.get_session(sid)
            if session is None:
                return
            if outcome.code in CANCEL_CODES:
                session, waited = server_testing.settled_session(
                    lambda: self.get_session(sid), len(history))
                with self.lock:
                    self.unsettled_after_cancel += waited
            outcome.turn = list(session.last_turn_token_ids)
            outcome.turn_input = session.last_turn_input_tokens
            expected = self.expected_input(input_fields, history)
            if outcome.code in CANCEL_CODES and session.num_tokens == len(history):
                outcome.turn = None  # cancelled before the engine took it: nothing changed
                return
            if expected is not None and outcome.turn[:outcome.turn_input] != expected:
                self.failures.add("last_turn_token_ids does not start with the turn's input",
                                  expected=expected, turn=outcome.turn,
                                  input_tokens=outcome.turn_input)
            generated = outcome.turn[outcome.turn_input:]
            if generated[:len(outcome.tokens)] != outcome.tokens:
                self.failures.add("last_turn_token_ids lacks the received tokens",
                                  received=outcome.tokens, turn_generated=generated,
                                  code=outcome.code.name)
            if outcome.code == OK and generated != outcome.tokens:
                self.failures.add("a completed turn holds other tokens than it streamed",
                                  received=outcome.tokens, turn_generated=generated)
            owned[sid] = history + outcome.turn
            if session.num_tokens != len(owned[sid]):
                self.failures.add("num_tokens differs from the concatenated last turns",
                                  num_tokens=session.num_tokens, history=len(owned[sid]))
            with self.lock:
                self.prompt_tokens[0] += outcome.turn_input
                self.generated_tokens[0] += len(generated)
        else:
            self.check_session_size(sid, history, "a failed turn (%s)" % outcome.code.name)

    def deleted_turn(self, outcome, sid, expected_input):
        """A turn whose session was deleted while it ran: what it streamed is a prefix of the
        reference, and the session is gone."""
        _, code = self.call("GetSession", lambda: self.stub.GetSession(
            pb.GetSessionRequest(session_id=sid), timeout=30),
            allowed=(grpc.StatusCode.NOT_FOUND,))
        if code != grpc.StatusCode.NOT_FOUND:
            self.failures.add("a deleted session is still there", code=code.name)
        if outcome.code != OK or expected_input is None:
            return
        outcome.deleted = True
        outcome.turn = expected_input + outcome.tokens
        outcome.turn_input = len(expected_input)
        with self.lock:
            self.prompt_tokens[0] += len(expected_input)
            self.generated_tokens[0] += len(outcome.tokens)
            self.generated_tokens[1] += (outcome.request.stopping.max_new_tokens
                                         - len(outcome.tokens))

    def fork(self, owned, sid):
        session, code = self.call("ForkSession", lambda: self.stub.ForkSession(
            pb.ForkSessionRequest(session_id=sid), timeout=30), sessions=1)
        if code != OK:
            return
        owned[session.session_id] = list(owned[sid])
        if session.num_tokens != len(owned[sid]):
            self.failures.add("a fork's num_tokens differs from its parent's history",
                              num_tokens=session.num_tokens, history=len(owned[sid]))

    def delete(self, owned, sid):
        _, code = self.call("DeleteSession", lambda: self.stub.DeleteSession(
            pb.DeleteSessionRequest(session_id=sid), timeout=30), sessions=-1)
        if code == OK:
            del owned[sid]

    def client(self, index):
        rng = random.Random("%d/%d" % (self.args.seed, index))
        owned = {}  # this thread's sessions: id -> history
        try:
            while self.take_request():
                r = rng.random()
                if r < 0.35 or (not owned and r < 0.5):
                    self.one_shot(rng)
                elif not owned or (r < 0.5 and len(owned) < self.args.sessions_per_client):
                    self.create_session(rng, owned)
                else:
                    sid = rng.choice(sorted(owned))
                    r = rng.random()
                    if r < 0.65:
                        self.turn(rng, owned, sid)
                    elif r < 0.75 and len(owned) < self.args.sessions_per_client:
                        self.fork(owned, sid)
                    elif r < 0.85:
                        self.check_session_size(sid, owned[sid], "GetSession")
                    else:
                        self.delete(owned, sid)
            # The final state of every session is checked by one more greedy turn.
            for sid in sorted(owned):
                self.turn(rng, owned, sid, probe=True)
        except Exception:  # noqa: BLE001 - a bug of the test itself fails the run
            self.failures.add("client thread raised", trace=traceback.format_exc())
        with self.lock:
            self.sessions.update(owned)


def reference_request(outcome):
    """The request whose fresh-server result the outcome must equal."""
    if outcome.kind == "oneshot":
        return outcome.request
    request = pb.GenerateRequest()
    request.CopyFrom(outcome.request)
    request.session_id = ""
    request.token_ids.ids[:] = outcome.history + outcome.turn[:outcome.turn_input]
    return request


def checkable(outcome):
    request = outcome.request
    seeded = request.sampling.temperature == 0 or request.sampling.HasField("seed")
    if not seeded:
        return False
    if outcome.code == OK:
        return outcome.kind == "oneshot" or outcome.turn is not None
    if outcome.code in CANCEL_CODES:  # a prefix to check, when something was generated
        if outcome.kind == "oneshot":
            return bool(outcome.tokens)
        return outcome.turn is not None and len(outcome.turn) > outcome.turn_input
    return False


def without_cached(usage):
    """Usage without cached_tokens: what the prefix cache held depends on the load before a
    request (the fresh reference server's cache is empty), the rest of the usage does not."""
    copy = type(usage)()
    copy.CopyFrom(usage)
    copy.ClearField("cached_tokens")
    return copy


def verify(outcome, pool, failures, stats):
    request = reference_request(outcome)
    if outcome.code != OK or outcome.deleted:  # only a prefix is checked: generate that much
        kept = outcome.turn[outcome.turn_input:] if outcome.turn is not None else outcome.tokens
        request = pb.GenerateRequest()
        request.CopyFrom(reference_request(outcome))
        request.stopping.max_new_tokens = len(kept)
    ref = pool.run(request)
    ref_tokens, ref_text, ref_last, ref_logprobs = ref.tokens, ref.text, ref.last, ref.logprobs
    context = dict(request=outcome.request, history=len(outcome.history or []),
                   got=outcome.tokens, reference=ref_tokens)
    if outcome.code != OK or outcome.deleted:
        # Cancelled: what was received, and what the session kept, is a prefix of the reference.
        if ref_tokens[:len(outcome.tokens)] != outcome.tokens or ref_tokens[:len(kept)] != kept:
            failures.add("a cancelled request's tokens are no prefix of the reference",
                         kept=kept, **context)
        stats["cancel_checked"] += 1
        stats["undelivered"] += len(kept) - len(outcome.tokens)
        return
    stats["checked_" + outcome.kind] += 1
    if outcome.tokens != ref_tokens:
        failures.add("tokens differ from the fresh-server reference", **context)
        return
    if outcome.text != ref_text:
        failures.add("text differs from the reference", text=outcome.text, ref_text=ref_text,
                     **context)
    if outcome.last.finish_reason != ref_last.finish_reason:
        failures.add("finish reason differs from the reference",
                     got_reason=outcome.last.finish_reason, ref_reason=ref_last.finish_reason,
                     **context)
    if outcome.last.usage.generated_tokens != ref_last.usage.generated_tokens:
        failures.add("usage.generated_tokens differs", **context)
    if outcome.kind == "oneshot" and without_cached(outcome.last.usage) != without_cached(ref_last.usage):
        failures.add("usage differs", usage=outcome.last.usage, ref_usage=ref_last.usage)
    if (outcome.kind == "turn"
            and outcome.last.usage.session_tokens != ref_last.usage.session_tokens):
        failures.add("usage.session_tokens differs from the one-shot over the history",
                     got=outcome.last.usage.session_tokens,
                     ref=ref_last.usage.session_tokens)
    if outcome.last.request_id != outcome.request.request_id:
        failures.add("request_id not echoed")
    if len(outcome.logprobs) != len(ref_logprobs):
        failures.add("logprobs count differs", got=len(outcome.logprobs),
                     ref=len(ref_logprobs))
        return
    for got, ref in zip(outcome.logprobs, ref_logprobs):
        diffs = [abs(got.chosen.logprob - ref.chosen.logprob)]
        diffs += [abs(a.logprob - b.logprob) for a, b in zip(got.top, ref.top)]
        stats["max_logprob_diff"] = max(stats["max_logprob_diff"], *diffs)
        if (got.chosen.token_id != ref.chosen.token_id or len(got.top) != len(ref.top)
                or max(diffs) > 1e-4):
            failures.add("logprobs differ from the reference", got=got, ref=ref)
            return


def parse_metrics(page):
    values = {}
    for name, labels, value in re.findall(r"^(lizard_\w+)(\{[^}]*\})? (\S+)$", page, re.M):
        values[name + labels] = float(value)
    return values


def check_metrics(workload, server, failures):
    """/metrics against the clients' tally. A call the client cancelled (or whose deadline
    passed) may have ended otherwise on the server (OK, RESOURCE_EXHAUSTED, ...: it was over
    before the cancel arrived), or not at all (its deadline passed before it reached the
    service). So per RPC: the server counts as many calls as the clients, less at most their
    cancels; every other code at least as often as the clients saw it; and the cancels at most
    as often."""
    values = parse_metrics(server.metrics())
    server_calls = collections.Counter()
    for key, value in values.items():
        m = re.match(r'lizard_requests_total\{code="(\w+)",rpc="(\w+)"\}', key)
        if m:
            server_calls[(m[2], m[1])] = int(value)
    client = workload.calls
    cancels = {code.name for code in CANCEL_CODES}
    for rpc in sorted({rpc for rpc, _ in client} | {rpc for rpc, _ in server_calls}):
        ours = {c: n for (r, c), n in client.items() if r == rpc and n}
        theirs = {c: n for (r, c), n in server_calls.items() if r == rpc and n}
        cancelled = sum(ours.get(c, 0) for c in cancels)
        if (not sum(ours.values()) - cancelled <= sum(theirs.values()) <= sum(ours.values())
                or any(theirs.get(c, 0) < n for c, n in ours.items() if c not in cancels)
                or sum(theirs.get(c, 0) for c in cancels) > cancelled):
            failures.add("lizard_requests_total differs from the clients' count", rpc=rpc,
                         client=ours, server=theirs)
    # Tokens: exact where the clients know them (completed requests, session turns); a cancelled
    # one-shot adds up to its input / max_new_tokens that the client cannot see.
    for name, (known, unknown) in (("lizard_prompt_tokens_total", workload.prompt_tokens),
                                   ("lizard_generated_tokens_total", workload.generated_tokens)):
        value = values.get(name, -1)
        if not known <= value <= known + unknown:
            failures.add(name + " outside what the clients saw", value=value, known=known,
                         unknown=unknown)
    for key in ("lizard_sessions", 'lizard_state_slots{location="device",state="used"}',
                'lizard_state_slots{location="host",state="used"}', "lizard_running_sequences",
                "lizard_queue_depth"):
        if values.get(key) != 0:
            failures.add("not idle at the end", metric=key, value=values.get(key))
    return values


def tally_tokens(workload):
    """Adds the one-shots' tokens (turns were added as they were read from GetSession)."""
    for o in workload.outcomes:
        if o.kind != "oneshot":
            continue
        if o.code == OK:
            workload.prompt_tokens[0] += o.last.usage.prompt_tokens
            workload.generated_tokens[0] += o.last.usage.generated_tokens
        elif o.code in CANCEL_CODES:
            workload.generated_tokens[0] += len(o.tokens)
            workload.generated_tokens[1] += max(0, o.request.stopping.max_new_tokens
                                                - len(o.tokens))
    for o in workload.outcomes:
        # The input of a cancelled one-shot, and of a request refused when the engine admitted
        # it, may be counted (the engine reports the whole input as the request's prompt tokens,
        # prefilled or not).
        if ((o.kind == "oneshot" and o.code in CANCEL_CODES)
                or o.code == grpc.StatusCode.RESOURCE_EXHAUSTED):
            request = o.request
            # Text input: at most a token per byte, and BOS.
            workload.prompt_tokens[1] += (len(request.token_ids.ids)
                                          if request.HasField("token_ids")
                                          else len(request.text.encode()) + 1)


def main():
    global pb, pbg
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--requests", type=int, default=400, help="workload operations")
    parser.add_argument("--duration", type=float, default=60,
                        help="seconds of workload at most (the checks follow)")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--sessions-per-client", type=int, default=2)
    parser.add_argument("--max-batch-tokens", type=int, default=80,
                        help="at least --max-running + 63 (the server refuses less)")
    parser.add_argument("--max-running", type=int, default=16)
    parser.add_argument("--prompt-factor", type=int, default=4,
                        help="longest input = this times --max-batch-tokens")
    parser.add_argument("--max-new", type=int, default=24, help="largest max_new_tokens")
    parser.add_argument("--threads", type=int, default=1, help="server --threads")
    parser.add_argument("--device-state-slots", type=int, default=2)
    parser.add_argument("--host-states", type=int, default=6,
                        help="host tier size in states (--host-state-bytes)")
    parser.add_argument("--checks", type=int, default=70,
                        help="reference runs: every session's final state and every cancel, "
                             "then a sample of the other results up to this many")
    parser.add_argument("--references", type=int, default=2,
                        help="fresh reference servers checking in parallel")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2 ** 31)
    print("differential test: seed %d (reproduce with --seed %d --requests %d --duration %g)"
          % (args.seed, args.seed, args.requests, args.duration), flush=True)

    failures = Failures()
    with tempfile.TemporaryDirectory() as stubs:
        pb, pbg = server_testing.generate_stubs(args.proto_dir, stubs)
        pool = ReferencePool(args, ahead=args.references + 1)
        # The state size decides the host tier's bytes: ask a reference.
        probe = pool.ready.get()
        pool.wanted.release()
        channel = grpc.insecure_channel(probe.address)
        state_bytes = pbg.LizardStub(channel).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=30).state_bytes_per_session
        channel.close()
        probe.close()

        server = server_testing.Server(
            args.server, args.model, *numerics_flags(args),
            "--max-batch-tokens", str(args.max_batch_tokens), "--max-running", str(args.max_running),
            "--device-state-slots", str(args.device_state_slots),
            "--host-state-bytes", str(args.host_states * state_bytes))
        channel = grpc.insecure_channel(server.address)
        stub = pbg.LizardStub(channel)
        try:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            workload = Workload(args, server, stub, info, failures)
            workload.count("GetModelInfo", OK)
            start = time.monotonic()
            threads = [threading.Thread(target=workload.client, args=(i,))
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            workload_s = time.monotonic() - start

            # Health, then every session deleted, then the counters.
            if server.proc.poll() is not None:
                failures.add("the server exited", log=server.log_text()[-3000:])
            elif server_testing.health(channel) != "SERVING":
                failures.add("the server is not SERVING after the workload")
            for sid in sorted(workload.sessions):
                workload.delete(workload.sessions, sid)
            tally_tokens(workload)
            metrics = check_metrics(workload, server, failures)

            # The oracle: fresh servers, a few in parallel.
            stats = collections.Counter(max_logprob_diff=0.0)
            # Every session's final state is checked, then samples of the completed and of
            # the cancelled results, about half each, up to --checks (an unchecked turn is
            # still covered by the session's next checked turn, whose reference runs over the
            # whole history).
            checkable_outcomes = [o for o in workload.outcomes if checkable(o)]
            todo = [o for o in checkable_outcomes if o.probe]
            completed = [o for o in checkable_outcomes
                         if not o.probe and o.code == OK and not o.deleted]
            cancelled = [o for o in checkable_outcomes if o.code != OK or o.deleted]
            left = max(0, args.checks - len(todo))
            n_cancelled = min(len(cancelled), max(left // 2, left - len(completed)))
            sampler = random.Random(args.seed)
            todo += sampler.sample(cancelled, n_cancelled)
            todo += sampler.sample(completed, min(len(completed), left - n_cancelled))
            work = queue.Queue()
            for o in todo:
                work.put(o)

            def checker():
                while True:
                    try:
                        o = work.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        verify(o, pool, failures, stats)
                    except Exception:  # noqa: BLE001
                        failures.add("reference run failed", trace=traceback.format_exc(),
                                     request=o.request)

            start = time.monotonic()
            checkers = [threading.Thread(target=checker) for _ in range(args.references)]
            for t in checkers:
                t.start()
            for t in checkers:
                t.join()
            check_s = time.monotonic() - start
        finally:
            pool.close()
            channel.close()
            log = server.log_text()
            server.close()

    codes = collections.Counter()
    for (rpc, code), n in workload.calls.items():
        codes[code] += n
    kinds = collections.Counter(("turn whose session was deleted" if o.deleted else o.kind,
                                 o.code.name) for o in workload.outcomes)
    print("seed %d: %d operations in %.1fs by %d clients; %d of %d checkable results checked "
          "against %d fresh servers in %.1fs" % (
              args.seed, args.requests - workload.remaining, workload_s, args.clients, len(todo),
              len(checkable_outcomes), pool.started, check_s))
    print("  calls by code:", dict(codes))
    print("  generate outcomes:", dict(kinds))
    print("  RESOURCE_EXHAUSTED (pools full) by rpc:", dict(workload.exhausted))
    print("  checked: %s" % dict(stats))
    print("  GetSession right after a cancel showed the turn still running: %d times"
          % workload.unsettled_after_cancel)
    print("  evictions %d, restores %d, generated tokens %d" % (
        metrics.get("lizard_state_evictions_total", -1),
        metrics.get("lizard_state_restores_total", -1),
        metrics.get("lizard_generated_tokens_total", -1)))
    if failures.items:
        print("%d FAILURES (seed %d); server log tail:\n%s" % (len(failures.items), args.seed,
                                                               log[-2000:]))
        sys.exit(1)
    print("OK (seed %d)" % args.seed)


if __name__ == "__main__":
    main()
