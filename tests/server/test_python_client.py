#!/usr/bin/python3
"""The shipped Python client (clients/python/lizard_client): its stubs equal a fresh generation
from proto/ (tools/gen_python_client.sh), and it talks to a real lizard-server. Usage:
  test_python_client.py --server BUILD/server/lizard-server --model MODEL_DIR --repo REPO"""
import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import unittest

ARGS = None


class PythonClientTest(unittest.TestCase):
    def test_stubs_are_current(self):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([os.path.join(ARGS.repo, "tools", "gen_python_client.sh"), out],
                           check=True)
            for name in ["lizard_pb2.py", "lizard_pb2_grpc.py"]:
                shipped = os.path.join(ARGS.repo, "clients", "python", "lizard_client", name)
                self.assertTrue(filecmp.cmp(os.path.join(out, name), shipped, shallow=False),
                                name + " is stale: run tools/gen_python_client.sh")

    def test_client_against_the_server(self):
        sys.path.insert(0, os.path.join(ARGS.repo, "clients", "python"))
        sys.path.insert(0, os.path.join(ARGS.repo, "tests", "server"))
        import server_testing
        from lizard_client import Client
        server = server_testing.Server(ARGS.server, ARGS.model)
        try:
            with Client(server.address) as client:
                self.assertEqual(client.model_info().vocab_size, 512)
                text = client.complete("Once upon a time", max_new_tokens=8, ignore_eos=True)
                self.assertIsInstance(text, str)
                one_shot = [t for r in client.generate(token_ids=[1, 5, 9], max_new_tokens=6,
                                                       ignore_eos=True) for t in r.token_ids]
                session = client.create_session(token_ids=[1, 5])
                turn = [t for r in client.generate(token_ids=[9], session_id=session.session_id,
                                                   max_new_tokens=6, ignore_eos=True)
                        for t in r.token_ids]
                self.assertEqual(turn, one_shot)
                self.assertEqual(client.get_session(session.session_id).num_tokens, 9)
                client.delete_session(session.session_id)
        finally:
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repo", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
