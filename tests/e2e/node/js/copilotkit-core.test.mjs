// Server-side tools through @copilotkit/core, the client CopilotKit React runs: it finds
// the runtime (GET …/info), then runs the agent; the server runs the tool as the caller
// and the agent's messages show the call, its result and the model's answer.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { CopilotKitCore, CopilotKitCoreRuntimeConnectionStatus } from "@copilotkit/core";

import { AUTH, OTHER_AUTH, RUNTIME_URL, TOOLS_AGENT } from "./env.mjs";

// The core asks the runtime for its agents only in a browser (it looks for `window`):
// give it the location of a page on the site, as CopilotKit React has.
globalThis.window ??= { location: new URL(RUNTIME_URL) };

// A connected core: resolves once the runtime's agents are known.
async function connect(headers) {
  const copilotkit = new CopilotKitCore({ runtimeUrl: RUNTIME_URL, headers });
  const { Connected, Error: Failed } = CopilotKitCoreRuntimeConnectionStatus;
  if (copilotkit.runtimeConnectionStatus !== Connected) {
    await new Promise((resolve, reject) => {
      const subscription = copilotkit.subscribe({
        onRuntimeConnectionStatusChanged: ({ status }) => {
          if (status === Connected || status === Failed) {
            subscription.unsubscribe();
            if (status === Connected) resolve();
            else reject(new Error(`the runtime at ${RUNTIME_URL} did not connect`));
          }
        },
      });
    });
  }
  return copilotkit;
}

// One user message to the tools agent; returns the agent's messages after the run.
async function ask(headers, content) {
  const copilotkit = await connect(headers);
  const agent = copilotkit.getAgent(TOOLS_AGENT);
  assert.ok(agent, `the runtime lists the agent ${TOOLS_AGENT}`);
  agent.threadId = randomUUID();
  agent.addMessage({ id: randomUUID(), role: "user", content });
  await copilotkit.runAgent({ agent });
  return agent.messages;
}

function transcript(messages) {
  const call = messages.find((m) => m.role === "assistant" && m.toolCalls?.length);
  const tool = messages.find((m) => m.role === "tool");
  const answer = messages.filter((m) => m.role === "assistant" && m.content).at(-1)?.content;
  return { call, tool, answer: answer ?? "" };
}

test("CopilotKit core: whoami runs on the server and the answer names the caller", async () => {
  const messages = await ask(AUTH, "Who am I? CALL:whoami{}");
  const { call, tool, answer } = transcript(messages);
  assert.deepEqual(
    messages.map((m) => m.role),
    ["user", "assistant", "tool", "assistant"],
    JSON.stringify(messages),
  );
  assert.equal(call.toolCalls.length, 1);
  assert.equal(call.toolCalls[0].function.name, "whoami");
  assert.equal(tool.toolCallId, call.toolCalls[0].id);
  assert.equal(tool.content, "alice");
  assert.ok(answer.includes("alice"), answer);
});

test("CopilotKit core: a second user gets their own name", async () => {
  const { tool, answer } = transcript(await ask(OTHER_AUTH, "Who am I? CALL:whoami{}"));
  assert.equal(tool.content, "bob");
  assert.ok(answer.includes("bob"), answer);
  assert.ok(!answer.includes("alice"), answer);
});

test("CopilotKit core: a user without a tool's permission gets the refusal as its result", async () => {
  const refused = transcript(await ask(AUTH, "CALL:staff_secret{}"));
  assert.equal(refused.call.toolCalls[0].function.name, "staff_secret");
  assert.equal(
    refused.tool.content,
    "Permission denied: this user may not use the tool 'staff_secret'.",
  );
  assert.ok(refused.answer.includes("Permission denied"), refused.answer);

  const allowed = transcript(await ask(OTHER_AUTH, "CALL:staff_secret{}"));
  assert.deepEqual(JSON.parse(allowed.tool.content), { secret: 42 });
});
