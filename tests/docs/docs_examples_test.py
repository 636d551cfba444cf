#!/usr/bin/python3
"""Runs the shell and Python examples of README.md and docs/server.md against a real
lizard-server (issue 10: "the README's examples must never fail again").

The code blocks are extracted from the Markdown at test time, so the docs and this test cannot
drift. In the Markdown, HTML comments right before a block (invisible when rendered) steer it:
  <!-- not-tested: REASON -->   the block is not run (sparingly: e.g. the quick start, whose
                                `test` command is this suite itself)
  <!-- test-expect: REGEX -->   its output must match REGEX (any number of these)
Every other ```sh / ```bash / ```shell / ```python block is run in order, from the repository
root, with:
  - 127.0.0.1:50051 / :9400 (and a bare --target default) pointed at a server this test started
    on free ports, the stub folder /tmp/lizard_py moved into a temporary directory, and
    build/... pointed at the build directory;
  - a block that starts build/server/lizard-server itself run on other free ports and on
    127.0.0.1 only: it must log "grpc listening on", then exit 0 on SIGTERM.
Each block must exit 0 and print something (or what its test-expect says). Usage:

  /usr/bin/python3 docs_examples_test.py --build-dir BUILD --source-dir REPO
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
import server_testing  # noqa: E402

DOCS = ("README.md", "docs/server.md")
BLOCK = re.compile(r"((?:<!--[^\n]*-->\n)*)```(sh|bash|shell|python)\n(.*?)```", re.S)


def blocks(path):
    """[(line, language, code, not_tested reason or None, [expected regexes])] of PATH."""
    with open(path) as f:
        text = f.read()
    found = []
    for m in BLOCK.finditer(text):
        comments = m[1]
        reason = re.search(r"<!--\s*not-tested:\s*(.*?)\s*-->", comments)
        expect = re.findall(r"<!--\s*test-expect:\s*(.*?)\s*-->", comments)
        found.append((text.count("\n", 0, m.start(3)), m[2], m[3], reason and reason[1], expect))
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rewrite(code, server, build_dir, stubs):
    code = code.replace("127.0.0.1:50051", server.address)
    code = code.replace("127.0.0.1:9400", "127.0.0.1:%d" % server.metrics_port)
    code = code.replace("127.0.0.1:8000", "127.0.0.1:%d" % server.http_port)
    code = code.replace("localhost:8000", "localhost:%d" % server.http_port)
    code = code.replace("/tmp/lizard_py", stubs)
    code = re.sub(r"(?<![\w/.])build/", build_dir.rstrip("/") + "/", code)
    # lizard-loadgen without --target talks to its default, 127.0.0.1:50051.
    code = re.sub(r"(lizard-loadgen)(?![^\n]*--target)", r"\1 --target " + server.address, code)
    return code


def run_server_block(code, where):
    """A block that starts lizard-server: run on free ports on 127.0.0.1, stopped by SIGTERM."""
    code = re.sub(r"--port\s+\d+", "--port %d" % free_port(), code)
    code = re.sub(r"--metrics-port\s+\d+", "--metrics-port %d" % free_port(), code)
    code = re.sub(r"--http-port\s+\d+", "--http-port %d" % free_port(), code)
    if "--http-port" not in code:
        code = code.rstrip() + " --http-port 0"
    code = code.rstrip() + " --host 127.0.0.1\n"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(["bash", "-c", "exec " + code.strip()], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            log.seek(0)
            text = log.read().decode(errors="replace")
            if "grpc listening on 127.0.0.1:" in text:
                break
            time.sleep(0.05)
        if "grpc listening on 127.0.0.1:" not in text:
            proc.kill()
            proc.wait()
            return "%s: the server did not start:\n%s" % (where, text)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "%s: the server did not exit on SIGTERM" % where
        return None if code == 0 else "%s: the server exited %d on SIGTERM" % (where, code)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per block")
    args = parser.parse_args()
    build_dir = os.path.abspath(args.build_dir)
    os.chdir(args.source_dir)

    failures, ran = [], 0
    http_port = free_port()
    server = server_testing.Server(os.path.join(build_dir, "server", "lizard-server"),
                                   "models/lizard-demo",  # the default model, as a user gets it
                                   "--http-port", str(http_port))
    server.http_port = http_port
    try:
        with tempfile.TemporaryDirectory() as stubs:
            for doc in DOCS:
                for line, language, code, not_tested, expect in blocks(doc):
                    where = "%s:%d (%s)" % (doc, line, language)
                    if not_tested:
                        print("skip %s: %s" % (where, not_tested))
                        continue
                    ran += 1
                    if language != "python" and re.match(r"\s*build/server/lizard-server\b",
                                                         code):
                        error = run_server_block(rewrite(code, server, build_dir, stubs), where)
                        print("ran %s: %s" % (where, error or "started, exited 0 on SIGTERM"))
                        if error:
                            failures.append(error)
                        continue
                    command = (["/usr/bin/python3", "-"] if language == "python"
                               else ["bash", "-euo", "pipefail", "-s"])
                    start = time.monotonic()
                    try:
                        result = subprocess.run(command, input=rewrite(code, server, build_dir,
                                                                       stubs),
                                                capture_output=True, text=True,
                                                timeout=args.timeout)
                        status, out = result.returncode, result.stdout + result.stderr
                    except subprocess.TimeoutExpired as e:
                        status, out = "timeout", str(e.stdout or "")
                    print("ran %s in %.1fs: exit %s" % (where, time.monotonic() - start, status))
                    problems = []
                    if status != 0:
                        problems.append("exit %s" % status)
                    if language == "python" or "50051" in code or "9400" in code:
                        if not out.strip():
                            problems.append("printed nothing")
                    for pattern in expect:
                        if not re.search(pattern, out, re.M):
                            problems.append("output does not match %r" % pattern)
                    if problems:
                        failures.append("%s: %s\n--- code ---\n%s--- output ---\n%s" % (
                            where, ", ".join(problems), code, out[-4000:]))
        if server.proc.poll() is not None:
            failures.append("the server exited:\n" + server.log_text()[-3000:])
        elif "INTERNAL" in server.log_text():
            failures.append("the server logged INTERNAL:\n" + server.log_text()[-3000:])
    finally:
        server.close()
    for failure in failures:
        print("FAIL " + failure)
    print("%d blocks run, %d failed" % (ran, len(failures)))
    sys.exit(1 if failures or ran == 0 else 0)


if __name__ == "__main__":
    main()
