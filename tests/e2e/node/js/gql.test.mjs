// @copilotkit/runtime-client-gql (urql with multipart incremental delivery) against the GraphQL face.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { CopilotRuntimeClient } from "@copilotkit/runtime-client-gql";

import { AUTH, GREETING, RUNTIME_URL } from "./env.mjs";

function client() {
  return new CopilotRuntimeClient({ url: RUNTIME_URL, headers: AUTH });
}

function data(content) {
  return {
    threadId: randomUUID(),
    metadata: { requestType: "Chat" },
    frontend: { actions: [], url: "http://localhost" },
    messages: [
      {
        id: randomUUID(),
        createdAt: new Date().toISOString(),
        textMessage: { role: "user", content },
      },
    ],
  };
}

test("the GraphQL client receives the answer incrementally", async () => {
  const runtime = client();
  const errors = [];
  runtime.handleGQLErrors = (error) => errors.push(error);
  const stream = runtime.asStream(runtime.generateCopilotResponse({ data: data("Stream this") }));
  const snapshots = [];
  let last;
  for await (const value of stream) {
    last = value.generateCopilotResponse;
    const [message] = last.messages ?? [];
    if (message?.content) snapshots.push(message.content.join(""));
  }
  assert.deepEqual(errors, []);
  const distinct = snapshots.filter((text, i) => i === 0 || text !== snapshots[i - 1]);
  assert.ok(distinct.length >= 3, `text arrived in ${distinct.length} steps: ${JSON.stringify(distinct)}`);
  for (let i = 1; i < distinct.length; i += 1) {
    assert.ok(distinct[i].startsWith(distinct[i - 1]), "each step extends the text");
  }
  const final = distinct.at(-1);
  assert.ok(final.startsWith(GREETING), final);
  assert.ok(final.includes("Stream this"));
  assert.equal(last.status.code, "Success");
  assert.equal(last.messages[0].__typename, "TextMessageOutput");
  assert.equal(last.messages[0].status.code, "Success");
});

test("an upstream failure is a FailedResponseStatus", async () => {
  const runtime = client();
  const result = await runtime
    .generateCopilotResponse({ data: data("fail [[fault:error:500:0]]") })
    .toPromise();
  assert.equal(result.error, undefined);
  const response = result.data.generateCopilotResponse;
  assert.equal(response.status.code, "Failed");
  assert.equal(response.status.reason, "UNKNOWN_ERROR");
  assert.deepEqual(response.messages, []);
});

test("availableAgents lists the configured agents", async () => {
  const result = await client().availableAgents().toPromise();
  assert.deepEqual(
    result.data.availableAgents.agents.map((agent) => agent.id),
    ["default", "helper"],
  );
});
