"""Greedy generations of lizard-server on the CUDA backend against the CPU backend (the reference
path): the same requests to two servers, token by token.

A request may part ways only where the CPU's top two candidates are a near tie (the CUDA backend
computes in bf16, the CPU in fp32): the first differing token must be the CPU's second choice,
within --tie-logprob of its first. Exit status 1 for any other difference.

  python3 tools/gpu/compare_backends.py --server BIN --model DIR --proto-dir proto [--requests N]
"""
import argparse
import os
import random
import sys
import tempfile

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "server"))
import server_testing  # noqa: E402


def generate(pb, stub, tokens, max_new_tokens):
    request = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=tokens), logprobs=2,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True))
    ids, logprobs = [], []
    for response in stub.Generate(request, timeout=120):
        ids.extend(response.token_ids)
        logprobs.extend(response.logprobs)
    return ids, logprobs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--tie-logprob", type=float, default=0.05)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        pb, pbg = server_testing.generate_stubs(args.proto_dir, out)
        cpu = server_testing.Server(args.server, args.model, "--backend", "cpu")
        gpu = server_testing.Server(args.server, args.model, "--backend", "cuda")
        try:
            cpu_stub = pbg.LizardStub(grpc.insecure_channel(cpu.address))
            gpu_stub = pbg.LizardStub(grpc.insecure_channel(gpu.address))
            info = cpu_stub.GetModelInfo(pb.GetModelInfoRequest())
            rng = random.Random(7)
            identical = ties = bad = 0
            for i in range(args.requests):
                prompt = [rng.randrange(info.vocab_size - 2) for _ in range(rng.randint(1, 200))]
                want, want_lp = generate(pb, cpu_stub, prompt, args.max_new_tokens)
                got, _ = generate(pb, gpu_stub, prompt, args.max_new_tokens)
                first = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), None)
                if first is None and len(want) == len(got):
                    identical += 1
                    continue
                top = want_lp[first].top if first is not None else []
                gap = top[0].logprob - top[1].logprob if len(top) > 1 else float("inf")
                near_tie = first is not None and len(top) > 1 and got[first] == top[1].token_id \
                    and gap <= args.tie_logprob
                ties += near_tie
                bad += not near_tie
                print("request %d (prompt %d tokens): differs at token %s, CPU top-2 gap %.4f%s"
                      % (i, len(prompt), first, gap, " (near tie)" if near_tie else " MISMATCH"))
            print("%d requests x %d greedy tokens: %d identical, %d part at a near tie, %d mismatch"
                  % (args.requests, args.max_new_tokens, identical, ties, bad))
        finally:
            cpu.close()
            gpu.close()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
