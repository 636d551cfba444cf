// The official `openai` npm client against lizard-server's OpenAI-compatible API: completions and
// chat, streaming and not, a session-bearing chat turn, an error. Starts the real binary on
// 127.0.0.1 (gRPC and metrics on free ports, HTTP on a free port) with a copy of the shipped model
// (symlinks) whose tokenizer_config.json holds server/chat_templates/chatml.jinja.
// Usage: node openai_client_test.mjs SERVER_BINARY MODEL_DIR
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import OpenAI from "openai";

const [serverBinary, modelDir] = process.argv.slice(2);
const CHATML = fs.readFileSync(
  new URL("../../server/chat_templates/chatml.jinja", import.meta.url), "utf8");
const greedy = { temperature: 0, ignore_eos: true };

let server;
let client;
let tmp;

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lizard-openai-"));
  const model = path.join(tmp, "lizard-tiny");
  fs.mkdirSync(model);
  for (const name of ["config.json", "model.safetensors", "tokenizer.json"]) {
    fs.symlinkSync(path.resolve(modelDir, name), path.join(model, name));
  }
  fs.writeFileSync(path.join(model, "tokenizer_config.json"),
                   JSON.stringify({ chat_template: CHATML, bos_token: "<|begin_of_text|>",
                                   eos_token: "<|end_of_text|>" }));
  const httpPort = await freePort();
  server = spawn(serverBinary, ["--model", model, "--host", "127.0.0.1", "--port", "0",
                                "--metrics-port", "0", "--http-host", "127.0.0.1",
                                "--http-port", String(httpPort)],
                 { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start:\n" + log)), 30000);
    const onData = (data) => {
      log += data;
      if (log.includes("http listening on")) {
        clearTimeout(timer);
        resolve();
      }
    };
    server.stdout.on("data", onData);
    server.stderr.on("data", onData);
    server.once("exit", (code) => reject(new Error(`server exited (${code}):\n${log}`)));
  });
  client = new OpenAI({ baseURL: `http://127.0.0.1:${httpPort}/v1`, apiKey: "none",
                        maxRetries: 0, timeout: 60000 });
});

after(() => {
  server?.kill("SIGKILL");
  fs.rmSync(tmp, { recursive: true, force: true });
});

test("models", async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ["lizard-tiny"]);
});

test("completions, streaming and not, give the same greedy text", async () => {
  const request = { model: "lizard-tiny", prompt: "Once upon a time", max_tokens: 12, ...greedy };
  const whole = await client.completions.create(request);
  assert.equal(whole.choices[0].finish_reason, "length");
  assert.equal(whole.usage.completion_tokens, 12);
  const stream = await client.completions.create({
    ...request, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) text += choice.text;
  }
  assert.equal(text, whole.choices[0].text);
  assert.deepEqual(usage, whole.usage);
});

test("chat completions, streaming and not", async () => {
  const request = { model: "lizard-tiny", max_tokens: 8, ...greedy,
                    messages: [{ role: "system", content: "You are a lizard." },
                               { role: "user", content: "Hello!" }] };
  const whole = await client.chat.completions.create(request);
  assert.equal(whole.choices[0].message.role, "assistant");
  assert.equal(whole.usage.completion_tokens, 8);
  const stream = await client.chat.completions.create({
    ...request, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, "length");
  assert.deepEqual(usage, whole.usage);
});

test("a session-bearing chat turn prefills only the new message", async () => {
  const session = await client.post("/sessions", { body: {} });
  assert.match(session.id, /^[0-9a-f]{32}$/);
  const first = await client.chat.completions.create({
    max_tokens: 4, ...greedy, session_id: session.id,
    messages: [{ role: "user", content: "Hi! I am a gecko and I like warm stones." }] });
  const again = { max_tokens: 4, ...greedy, messages: [{ role: "user", content: "Hi! I am a gecko and I like warm stones." }] };
  const second = await client.chat.completions.create(again,
                                                      { headers: { "X-Session-Id": session.id } });
  // The second turn renders the same message without BOS: one token fewer than the first.
  assert.equal(second.usage.prompt_tokens, first.usage.prompt_tokens - 1);
  const streamed = await client.chat.completions.create(
    { ...again, stream: true, stream_options: { include_usage: true } },
    { headers: { "X-Session-Id": session.id } });
  let usage = null;
  for await (const chunk of streamed) usage = chunk.usage ?? usage;
  assert.equal(usage.prompt_tokens, second.usage.prompt_tokens);
});

test("errors are OpenAI's", async () => {
  await assert.rejects(client.completions.create({ model: "gpt-4", prompt: "x" }), (error) => {
    assert.ok(error instanceof OpenAI.NotFoundError);
    assert.equal(error.code, "model_not_found");
    return true;
  });
  await assert.rejects(client.completions.create({ model: "lizard-tiny", prompt: "x", n: 2 }),
                       (error) => error instanceof OpenAI.BadRequestError && error.param === "n");
});
