// Server-side tools through @ag-ui/client's HttpAgent: the server runs the agent's tools
// as the caller and shows each step as AG-UI tool events, then the model's answer.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { buildResumeArray, HttpAgent } from "@ag-ui/client";

import { AUTH, OTHER_AUTH, RUNTIME_URL, TOOLS_AGENT } from "./env.mjs";

async function run(headers, content) {
  const agent = new HttpAgent({
    url: `${RUNTIME_URL}/agent/${TOOLS_AGENT}/run`,
    headers,
    threadId: randomUUID(),
  });
  agent.addMessage({ id: randomUUID(), role: "user", content });
  const events = [];
  const { newMessages } = await agent.runAgent(
    {},
    { onEvent: ({ event }) => events.push(event) },
  );
  return { events, newMessages, messages: agent.messages };
}

function toolSteps(events) {
  return events.filter((e) => e.type.startsWith("TOOL_CALL")).map((e) => e.type);
}

function answerOf(newMessages) {
  return newMessages.filter((m) => m.role === "assistant" && m.content).at(-1).content;
}

test("the model calls whoami: tool events, then an answer with the caller's name", async () => {
  const { events, newMessages } = await run(AUTH, "Who am I? CALL:whoami{}");
  assert.equal(events[0].type, "RUN_STARTED");
  assert.equal(events.at(-1).type, "RUN_FINISHED", JSON.stringify(events.at(-1)));
  assert.deepEqual(toolSteps(events), [
    "TOOL_CALL_START",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "TOOL_CALL_RESULT",
  ]);
  const start = events.find((e) => e.type === "TOOL_CALL_START");
  const result = events.find((e) => e.type === "TOOL_CALL_RESULT");
  assert.equal(start.toolCallName, "whoami");
  assert.equal(result.toolCallId, start.toolCallId);
  assert.equal(result.content, "alice");
  // The client's own transcript of the run: the call, its result, the answer.
  const call = newMessages.find((m) => m.role === "assistant" && m.toolCalls?.length);
  assert.equal(call.toolCalls[0].function.name, "whoami");
  const tool = newMessages.find((m) => m.role === "tool");
  assert.equal(tool.toolCallId, start.toolCallId);
  assert.equal(tool.content, "alice");
  assert.ok(answerOf(newMessages).includes("alice"), answerOf(newMessages));
  assert.ok(events.at(-1).result.usage.total_tokens > 0);
});

test("a second user gets their own name", async () => {
  const { events, newMessages } = await run(OTHER_AUTH, "Who am I? CALL:whoami{}");
  const result = events.find((e) => e.type === "TOOL_CALL_RESULT");
  assert.equal(result.content, "bob");
  assert.ok(answerOf(newMessages).includes("bob"), answerOf(newMessages));
  assert.ok(!answerOf(newMessages).includes("alice"));
});

test("a user without a tool's permission gets the refusal as its result", async () => {
  const refused = await run(AUTH, "CALL:staff_secret{}");
  const result = refused.events.find((e) => e.type === "TOOL_CALL_RESULT");
  assert.equal(result.content, "Permission denied: this user may not use the tool 'staff_secret'.");
  assert.equal(refused.events.at(-1).type, "RUN_FINISHED");
  assert.ok(answerOf(refused.newMessages).includes("Permission denied"));

  // bob holds the permission: the same call runs for him.
  const allowed = await run(OTHER_AUTH, "CALL:staff_secret{}");
  const his = allowed.events.find((e) => e.type === "TOOL_CALL_RESULT");
  assert.deepEqual(JSON.parse(his.content), { secret: 42 });
});

// A confirm=True tool: the run ends with an AG-UI interrupt, the next run answers it.
function agentFor(headers, content) {
  const agent = new HttpAgent({
    url: `${RUNTIME_URL}/agent/${TOOLS_AGENT}/run`,
    headers,
    threadId: randomUUID(),
  });
  agent.addMessage({ id: randomUUID(), role: "user", content });
  return agent;
}

async function runEvents(agent, parameters = {}) {
  const events = [];
  const { newMessages } = await agent.runAgent(parameters, {
    onEvent: ({ event }) => events.push(event),
  });
  return { events, newMessages };
}

async function interrupted() {
  const agent = agentFor(AUTH, 'Archive it. CALL:archive_note{"note": "memo"}');
  const { events } = await runEvents(agent);
  assert.deepEqual(toolSteps(events), ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"]);
  const finished = events.at(-1);
  assert.equal(finished.type, "RUN_FINISHED");
  assert.equal(finished.outcome.type, "interrupt", JSON.stringify(finished));
  assert.equal(agent.pendingInterrupts.length, 1);
  const [interrupt] = agent.pendingInterrupts;
  const start = events.find((e) => e.type === "TOOL_CALL_START");
  assert.equal(interrupt.toolCallId, start.toolCallId);
  assert.equal(interrupt.reason, "tool_confirmation");
  assert.deepEqual(interrupt.responseSchema.required, ["approved"]);
  assert.ok(Date.parse(interrupt.expiresAt) > Date.now(), interrupt.expiresAt);
  // The call is in the client's transcript, without a result yet.
  assert.equal(agent.messages.filter((m) => m.role === "tool").length, 0);
  return { agent, interrupt };
}

test("approving an interrupt runs the confirm tool as the caller", async () => {
  const { agent, interrupt } = await interrupted();
  const resume = buildResumeArray(agent.pendingInterrupts, {
    [interrupt.id]: { status: "resolved", payload: { approved: true } },
  });
  const { events, newMessages } = await runEvents(agent, { resume });
  assert.equal(events.at(-1).type, "RUN_FINISHED", JSON.stringify(events.at(-1)));
  assert.notEqual(events.at(-1).outcome?.type, "interrupt");
  assert.deepEqual(agent.pendingInterrupts, []);
  const result = events.find((e) => e.type === "TOOL_CALL_RESULT");
  assert.equal(result.toolCallId, interrupt.toolCallId);
  assert.equal(result.content, "alice archived memo");
  assert.ok(answerOf(newMessages).includes("alice archived memo"), answerOf(newMessages));
});

test("denying an interrupt does not run the confirm tool", async () => {
  const { agent, interrupt } = await interrupted();
  const resume = buildResumeArray(agent.pendingInterrupts, {
    [interrupt.id]: { status: "resolved", payload: { approved: false } },
  });
  const { events, newMessages } = await runEvents(agent, { resume });
  const result = events.find((e) => e.type === "TOOL_CALL_RESULT");
  assert.equal(result.toolCallId, interrupt.toolCallId);
  assert.equal(result.content, "The user did not approve this call of 'archive_note'; it did not run.");
  assert.ok(answerOf(newMessages).includes("did not approve"), answerOf(newMessages));
  assert.ok(!answerOf(newMessages).includes("archived memo"));
});
