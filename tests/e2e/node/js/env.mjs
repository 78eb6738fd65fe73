// Where the copilotedge server under test is, handed over by tests/e2e/node/test_copilotkit.py.
import assert from "node:assert/strict";

export const BASE_URL = process.env.COPILOTEDGE_URL;
export const API_KEY = process.env.COPILOTEDGE_API_KEY;
assert.ok(BASE_URL && API_KEY, "COPILOTEDGE_URL and COPILOTEDGE_API_KEY must be set");

export const RUNTIME_URL = `${BASE_URL}/copilotkit`;
export const AUTH = { Authorization: `Bearer ${API_KEY}` };
// The emulator's answers begin with this, then echo what the user said.
export const GREETING = "Hello from the Workers AI emulator.";
// A second user's key (the server tools run as whoever calls).
export const OTHER_API_KEY = process.env.COPILOTEDGE_OTHER_API_KEY;
assert.ok(OTHER_API_KEY, "COPILOTEDGE_OTHER_API_KEY must be set");
export const OTHER_AUTH = { Authorization: `Bearer ${OTHER_API_KEY}` };
// The agent whose server tools (whoami, staff_secret, archive_note: confirm=True) the
// server runs itself.
export const TOOLS_AGENT = "helper";
