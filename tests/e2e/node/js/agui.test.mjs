// @ag-ui/client's HttpAgent (which verifies the event order) against the AG-UI endpoint.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { HttpAgent } from "@ag-ui/client";

import { AUTH, GREETING, RUNTIME_URL } from "./env.mjs";

const WEATHER_TOOL = {
  name: "get_weather",
  description: "The weather in a city.",
  parameters: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
  },
};

function newAgent() {
  return new HttpAgent({
    url: `${RUNTIME_URL}/agent/default/run`,
    headers: AUTH,
    threadId: randomUUID(),
  });
}

function recorder() {
  const events = [];
  return { events, subscriber: { onEvent: ({ event }) => events.push(event) } };
}

test("HttpAgent gets a streamed text answer", async () => {
  const agent = newAgent();
  agent.addMessage({ id: randomUUID(), role: "user", content: "Hello node" });
  const { events, subscriber } = recorder();
  const { newMessages } = await agent.runAgent({}, subscriber);

  const types = events.map((e) => e.type);
  assert.equal(types[0], "RUN_STARTED");
  assert.equal(types.at(-1), "RUN_FINISHED");
  const deltas = events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT");
  assert.ok(deltas.length > 1, "the answer arrives in several pieces");
  assert.equal(newMessages.length, 1);
  assert.equal(newMessages[0].role, "assistant");
  assert.ok(newMessages[0].content.startsWith(GREETING), newMessages[0].content);
  assert.ok(newMessages[0].content.includes("Hello node"));
  const finished = events.at(-1);
  assert.ok(finished.result.usage.total_tokens > 0);
});

test("a frontend tool call round-trip", async () => {
  const agent = newAgent();
  agent.addMessage({
    id: randomUUID(),
    role: "user",
    content: 'Please call get_weather with {"city": "Paris"}',
  });
  const first = recorder();
  const run1 = await agent.runAgent({ tools: [WEATHER_TOOL] }, first.subscriber);

  const types = first.events.map((e) => e.type);
  assert.deepEqual(
    types.filter((t) => t.startsWith("TOOL_CALL")).filter((t, i, all) => all.indexOf(t) === i),
    ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"],
  );
  const start = first.events.find((e) => e.type === "TOOL_CALL_START");
  assert.equal(start.toolCallName, "get_weather");
  const [assistant] = run1.newMessages;
  assert.equal(assistant.role, "assistant");
  const [call] = assistant.toolCalls;
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });

  // The application runs the tool and sends its result back in the next run.
  agent.addMessage({ id: randomUUID(), role: "tool", toolCallId: call.id, content: "Sunny, 21C" });
  const second = recorder();
  const run2 = await agent.runAgent({ tools: [WEATHER_TOOL] }, second.subscriber);
  assert.equal(second.events.at(-1).type, "RUN_FINISHED");
  const answer = run2.newMessages.find((m) => m.role === "assistant");
  assert.ok(answer.content.includes("Sunny, 21C"), answer.content);
});

test("an upstream failure surfaces as RUN_ERROR", async () => {
  const agent = newAgent();
  agent.addMessage({ id: randomUUID(), role: "user", content: "break [[fault:error:500:0]]" });
  const { events, subscriber } = recorder();
  let runErrors = 0;
  // A RUN_ERROR ends the run; whether runAgent then rejects is the client's choice.
  await agent
    .runAgent({}, { ...subscriber, onRunErrorEvent: () => { runErrors += 1; } })
    .catch(() => {});
  assert.equal(runErrors, 1);
  const error = events.find((e) => e.type === "RUN_ERROR");
  assert.ok(error, "a RUN_ERROR event arrived");
  assert.equal(error.code, "upstream_error");
  assert.ok(!events.some((e) => e.type === "RUN_FINISHED"));
});

test("the single route takes the same run as an envelope", async () => {
  const info = await fetch(RUNTIME_URL, {
    method: "POST",
    headers: { ...AUTH, "Content-Type": "application/json" },
    body: JSON.stringify({ method: "info" }),
  });
  assert.equal(info.status, 200);
  const body = await info.json();
  assert.equal(body.agents.default.className, "CopilotEdgeAgent");

  const agent = new HttpAgent({ url: RUNTIME_URL, headers: AUTH, threadId: randomUUID() });
  // What CopilotKit's single-route transport sends: the RunAgentInput wrapped in an envelope.
  agent.requestInit = function (input) {
    const init = HttpAgent.prototype.requestInit.call(this, input);
    const envelope = { method: "agent/run", params: { agentId: "default" }, body: JSON.parse(init.body) };
    return { ...init, body: JSON.stringify(envelope) };
  };
  agent.addMessage({ id: randomUUID(), role: "user", content: "Via the envelope" });
  const { newMessages } = await agent.runAgent();
  assert.ok(newMessages[0].content.includes("Via the envelope"));
});
