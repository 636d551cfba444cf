#!/usr/bin/python3
"""Durable sessions and session export/import (issue 15, part 2) against real lizard-server
processes on 127.0.0.1:
  - a live session moved to another server process (gRPC ExportSession/ImportSession, and the
    HTTP equivalents) continues with the same greedy tokens as an unmoved one;
  - a blob that is corrupt is INVALID_ARGUMENT, one of another model FAILED_PRECONDITION;
  - kill -9 of a server with --state-dir and --state-save-interval N loses at most the turns of
    the last N seconds, and what it kept continues exactly;
  - a SIGTERM drain loses nothing;
  - a corrupt file in --state-dir is refused with a log line, the other sessions still load.
The reference for "continues exactly" is the rule of docs/server.md: continuing a session equals
a one-shot request over its history (the concatenation of its turns' last_turn_token_ids).

  /usr/bin/python3 test_durable_sessions.py --server BUILD/server/lizard-server \
      --model MODEL_DIR --proto-dir REPO/proto
"""
import os
import signal
import struct
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import zlib

import grpc

import server_testing

ARGS = None
pb = pbg = None

PROBE = [5, 6, 7]
INTERVAL_S = 1


def greedy(max_new_tokens):
    return pb.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True)


class Client:
    """A stub on one server, with the helpers these tests need."""

    def __init__(self, server):
        self.server = server
        self.channel = grpc.insecure_channel(server.address)
        self.stub = pbg.LizardStub(self.channel)

    def close(self):
        self.channel.close()

    def generate(self, **fields):
        tokens = []
        for response in self.stub.Generate(pb.GenerateRequest(**fields), timeout=60):
            tokens += list(response.token_ids)
        return tokens

    def new_session(self, prefix):
        return self.stub.CreateSession(
            pb.CreateSessionRequest(token_ids=pb.TokenIds(ids=prefix)), timeout=30).session_id

    def turn(self, sid, ids, max_new_tokens=8):
        """One greedy turn; returns what it added to the session (last_turn_token_ids)."""
        self.generate(session_id=sid, token_ids=pb.TokenIds(ids=ids), stopping=greedy(max_new_tokens))
        return list(self.get(sid).last_turn_token_ids)

    def get(self, sid):
        return self.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=30)

    def continuation(self, sid):
        return self.generate(session_id=sid, token_ids=pb.TokenIds(ids=PROBE), stopping=greedy(12))

    def one_shot(self, history):
        return self.generate(token_ids=pb.TokenIds(ids=history + PROBE), stopping=greedy(12))

    def export(self, sid):
        return b"".join(chunk.data for chunk in self.stub.ExportSession(
            pb.ExportSessionRequest(session_id=sid), timeout=30))

    def import_blob(self, blob, chunk_bytes=1000):
        chunks = [pb.SessionBlobChunk(data=blob[i:i + chunk_bytes])
                  for i in range(0, len(blob), chunk_bytes)]
        return self.stub.ImportSession(iter(chunks), timeout=30)


def conversation(client, sid, turns):
    """Runs TURNS greedy turns on SID; returns the history after each (prefix turn first)."""
    history = list(client.get(sid).last_turn_token_ids)
    histories = [list(history)]
    for n in range(turns):
        history += client.turn(sid, [10 + n, 20 + n])
        histories.append(list(history))
    return histories


def with_record(blob, change):
    """BLOB with its record changed by CHANGE(record), header and checksum made right again."""
    record = pb.SessionRecord.FromString(blob[20:])
    change(record)
    body = record.SerializeToString()
    return b"LZSB" + struct.pack("<IIQ", 1, zlib.crc32(body), len(body)) + body


class ExportImportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.servers = [server_testing.HttpServer(ARGS.server, ARGS.model, "--threads", "1")
                       for _ in range(2)]
        cls.a, cls.b = (Client(s) for s in cls.servers)

    @classmethod
    def tearDownClass(cls):
        for c in (cls.a, cls.b):
            c.close()
        for s in cls.servers:
            s.close()

    def test_moved_session_continues_like_an_unmoved_one(self):
        sid = self.a.new_session([1, 2, 3, 4])
        history = conversation(self.a, sid, 2)[-1]
        unmoved = self.a.stub.ForkSession(pb.ForkSessionRequest(session_id=sid)).session_id
        blob = self.a.export(sid)
        self.assertGreater(len(blob), 1000)  # several chunks below
        moved = self.b.import_blob(blob)
        self.assertEqual(moved.session_id, sid)
        self.assertEqual(moved.num_tokens, len(history))
        self.assertEqual(list(moved.last_turn_token_ids),
                         list(self.a.get(sid).last_turn_token_ids))
        expected = self.a.continuation(unmoved)
        self.assertEqual(self.b.continuation(sid), expected)
        self.assertEqual(self.a.one_shot(history), expected)
        # The export left the source as it was.
        self.assertEqual(self.a.continuation(sid), expected)
        # Importing an id that exists is refused.
        with self.assertRaises(grpc.RpcError) as caught:
            self.b.import_blob(blob)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.ALREADY_EXISTS)

    def test_http_export_and_import(self):
        sid = self.a.new_session([1, 2, 3])
        history = conversation(self.a, sid, 1)[-1]
        base_a = "http://127.0.0.1:%d" % self.servers[0].http_port
        base_b = "http://127.0.0.1:%d" % self.servers[1].http_port
        with urllib.request.urlopen(base_a + "/v1/sessions/export?session_id=" + sid,
                                    timeout=30) as response:
            blob = response.read()
        self.assertEqual(blob, self.a.export(sid))
        request = urllib.request.Request(base_b + "/v1/sessions/import", data=blob,
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=30) as response:
            self.assertIn(sid.encode(), response.read())
        self.assertEqual(self.b.continuation(sid), self.a.one_shot(history))
        # A corrupt body is a 400.
        request = urllib.request.Request(base_b + "/v1/sessions/import", data=blob[:-1])
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(caught.exception.code, 400)

    def assert_refused(self, blob, code):
        """Importing BLOB fails with CODE; returns the error's details."""
        with self.assertRaises(grpc.RpcError) as caught:
            self.b.import_blob(blob)
        self.assertEqual(caught.exception.code(), code)
        return caught.exception.details()

    def test_corrupt_and_foreign_blobs_are_refused(self):
        sid = self.a.new_session([1, 2, 3])
        conversation(self.a, sid, 1)
        blob = self.a.export(sid)
        flipped = blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]
        for bad in (blob[:-3], blob[:10], b"nonsense" * 10, flipped):
            self.assert_refused(bad, grpc.StatusCode.INVALID_ARGUMENT)
        foreign = with_record(blob, lambda r: setattr(r, "model_fingerprint", "other"))
        self.assertIn("another model",
                      self.assert_refused(foreign, grpc.StatusCode.FAILED_PRECONDITION))
        # A well-formed record whose state bytes are not this model's.
        garbage = with_record(blob, lambda r: setattr(r, "state", b"x" * 100))
        self.assert_refused(garbage, grpc.StatusCode.INVALID_ARGUMENT)
        # An id that could name another file is refused.
        escaping = with_record(blob, lambda r: setattr(r, "session_id", "../x"))
        self.assert_refused(escaping, grpc.StatusCode.INVALID_ARGUMENT)

    def test_unknown_session_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.a.export("0123456789abcdef0123456789abcdef")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)


class StateDirTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.close()
        self.dir.cleanup()

    def start(self, *flags):
        server = server_testing.Server(ARGS.server, ARGS.model, "--threads", "1",
                                       "--state-dir", self.dir.name, *flags)
        self.servers.append(server)
        return server

    def check_continues(self, client, sid, history):
        """SID holds exactly HISTORY and continues like a one-shot over it."""
        self.assertEqual(client.get(sid).num_tokens, len(history))
        self.assertEqual(client.continuation(sid), client.one_shot(history))

    def test_kill_loses_at_most_the_last_interval(self):
        server = self.start("--state-save-interval", "%ds" % INTERVAL_S)
        client = Client(server)
        settled = client.new_session([1, 2, 3])
        settled_history = conversation(client, settled, 2)[-1]
        recent = client.new_session([4, 5, 6])
        recent_histories = conversation(client, recent, 1)
        time.sleep(INTERVAL_S + 1.5)  # a save has happened since: both are on disk
        recent_histories.append(recent_histories[-1] + client.turn(recent, [30, 31]))
        server.proc.send_signal(signal.SIGKILL)  # at once: the last turn may be lost
        server.proc.wait()
        client.close()

        client = Client(self.start("--state-save-interval", "%ds" % INTERVAL_S))
        self.check_continues(client, settled, settled_history)
        kept = client.get(recent).num_tokens
        candidates = [h for h in recent_histories[-2:] if len(h) == kept]
        self.assertEqual(len(candidates), 1, "recent session holds %d tokens" % kept)
        self.check_continues(client, recent, candidates[0])
        client.close()

    def test_sigterm_drain_loses_nothing(self):
        server = self.start("--state-save-interval", "1h")
        client = Client(server)
        sids = [client.new_session([1 + n, 2, 3]) for n in range(3)]
        histories = [conversation(client, sid, 2)[-1] for sid in sids]
        client.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sids[2]))
        server.proc.send_signal(signal.SIGTERM)
        self.assertEqual(server.proc.wait(timeout=60), 0)
        self.assertRegex(server.log_text(), r"state-dir: saved 2 sessions")
        client.close()

        server = self.start("--state-save-interval", "1h")
        client = Client(server)
        for sid, history in zip(sids[:2], histories[:2]):
            self.check_continues(client, sid, history)
        with self.assertRaises(grpc.RpcError) as caught:
            client.get(sids[2])
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn("loaded 2 sessions", server.log_text())
        client.close()

    def test_corrupt_file_is_refused_and_the_rest_load(self):
        server = self.start("--state-save-after-turn")
        client = Client(server)
        good = client.new_session([1, 2, 3])
        history = conversation(client, good, 1)[-1]
        bad = client.new_session([4, 5, 6])
        conversation(client, bad, 1)
        time.sleep(0.5)  # written after the turn (polled every 50 ms)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        client.close()
        path = os.path.join(self.dir.name, bad + ".session")
        with open(path, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            f.write(b"XXXXX")
        with open(os.path.join(self.dir.name, "junk.session"), "wb") as f:
            f.write(b"not a session")

        server = self.start()
        client = Client(server)
        self.check_continues(client, good, history)
        with self.assertRaises(grpc.RpcError) as caught:
            client.get(bad)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        log = server.log_text()
        self.assertRegex(log, r"refusing .*%s\.session: INVALID_ARGUMENT: .*checksum" % bad)
        self.assertRegex(log, r"refusing .*junk\.session")
        self.assertIn("loaded 1 sessions", log)
        self.assertTrue(os.path.exists(path + ".corrupt"))
        client.close()


if __name__ == "__main__":
    server_testing.run_tests(globals())
