// The demo chat page: streams answers over the copilotedge WebSocket (protocol in
// CONTRACT.md), lists conversations from the HTTP API, and resumes an answer that was
// still being generated when the page was reloaded. The server's tool steps show above
// the answer, with Approve/Deny for a tool that needs approval. No build step, no
// dependencies.
"use strict";

(() => {
  const app = document.querySelector(".app");
  const list = document.getElementById("conversations");
  const log = document.getElementById("messages");
  const form = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const statusLine = document.getElementById("status");
  const conversationsUrl = app.dataset.conversationsUrl;

  // sessionStorage keys: the open conversation, and the answer being generated.
  const OPEN = "copilotedge.conversation";
  const GENERATING = "copilotedge.generating";

  let socket = null;
  let ready = false;
  let counter = 0;
  let conversationId = sessionStorage.getItem(OPEN);
  // The answer streaming into the page: {id, el, conversationId, messageId}.
  let active = null;

  // Server offsets count Unicode code points; JavaScript string length counts UTF-16 units.
  const codePoints = (text) => [...text].length;

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function updateButtons() {
    sendButton.disabled = !ready || active !== null;
    stopButton.disabled = !ready || active === null;
  }

  function addMessage(role, text, status) {
    const el = document.createElement("div");
    el.className = `message ${role}`;
    if (status && status !== "complete") el.classList.add(status);
    el.textContent = text;
    log.appendChild(el);
    log.scrollTop = log.scrollHeight;
    return el;
  }

  // A server tool call: its name and arguments, then its result (or a request to approve).
  const toolSteps = new Map();

  function addToolStep(toolCallId, name, args, before) {
    const el = document.createElement("div");
    el.className = "tool-step";
    el.dataset.toolCallId = toolCallId;
    const call = document.createElement("div");
    call.className = "tool-call";
    call.textContent = `Tool: ${name}(${args || ""})`;
    el.appendChild(call);
    log.insertBefore(el, before || null);
    toolSteps.set(toolCallId, el);
    return el;
  }

  function showToolResult(toolCallId, content) {
    const el = toolSteps.get(toolCallId);
    if (!el) return;
    el.querySelector(".tool-confirm")?.remove();
    const result = document.createElement("div");
    result.className = "tool-result";
    result.textContent = content;
    el.appendChild(result);
  }

  function askApproval(chatId, toolCallId) {
    const el = toolSteps.get(toolCallId);
    if (!el) return;
    const box = document.createElement("div");
    box.className = "tool-confirm";
    box.append("This tool needs your approval: ");
    for (const [label, approve] of [["Approve", true], ["Deny", false]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = approve ? "approve" : "deny";
      button.textContent = label;
      button.addEventListener("click", () => {
        send({ type: "confirm", id: chatId, tool_call_id: toolCallId, approve });
        box.replaceChildren(approve ? "Approved." : "Denied.");
      });
      box.appendChild(button);
    }
    el.appendChild(box);
  }

  function remember() {
    if (conversationId) sessionStorage.setItem(OPEN, conversationId);
    else sessionStorage.removeItem(OPEN);
    if (active && active.messageId) {
      sessionStorage.setItem(
        GENERATING,
        JSON.stringify({ conversationId: active.conversationId, messageId: active.messageId }),
      );
    } else {
      sessionStorage.removeItem(GENERATING);
    }
  }

  function finish(status, note) {
    if (!active) return;
    active.el.classList.remove("streaming");
    if (status !== "complete") active.el.classList.add(status);
    if (note) active.el.textContent += `\n[${note}]`;
    active = null;
    remember();
    updateButtons();
    refreshList();
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  async function refreshList() {
    try {
      const page = await getJSON(`${conversationsUrl}?limit=50`);
      list.replaceChildren(
        ...page.data.map((conversation) => {
          const item = document.createElement("li");
          item.textContent = conversation.title || "(untitled)";
          item.dataset.id = conversation.id;
          item.classList.toggle("current", conversation.id === conversationId);
          return item;
        }),
      );
    } catch (error) {
      setStatus(`Could not load conversations (${error.message}).`);
    }
  }

  // Shows a stored conversation; returns it (with its messages).
  async function openConversation(id) {
    const conversation = await getJSON(`${conversationsUrl}${id}/`);
    conversationId = id;
    log.replaceChildren();
    toolSteps.clear();
    const elements = new Map();
    for (const message of conversation.messages) {
      if (message.role === "tool") {
        showToolResult(message.tool_call_id, message.content);
      } else if (message.role === "assistant" && message.tool_calls) {
        for (const call of message.tool_calls) {
          addToolStep(call.id, call.function.name, call.function.arguments);
        }
        if (message.content) addMessage("assistant", message.content, message.status);
      } else if (message.role === "user" || message.role === "assistant") {
        elements.set(message.id, addMessage(message.role, message.content, message.status));
      }
    }
    remember();
    refreshList();
    return { conversation, elements };
  }

  // After a reload: pick the generating answer up where the stored text ends.
  async function resumeGenerating() {
    const saved = JSON.parse(sessionStorage.getItem(GENERATING) || "null");
    if (!saved || active) return;
    let opened;
    try {
      opened = await openConversation(saved.conversationId);
    } catch (error) {
      sessionStorage.removeItem(GENERATING);
      return;
    }
    const message = opened.conversation.messages.find((m) => m.id === saved.messageId);
    const el = opened.elements.get(saved.messageId);
    if (!message || !el || message.status !== "streaming") {
      sessionStorage.removeItem(GENERATING);
      return;
    }
    el.classList.add("streaming");
    active = {
      id: `resume-${++counter}`,
      el,
      conversationId: saved.conversationId,
      messageId: saved.messageId,
    };
    updateButtons();
    send({
      type: "resume",
      id: active.id,
      conversation_id: saved.conversationId,
      after: codePoints(message.content),
    });
  }

  function send(message) {
    socket.send(JSON.stringify(message));
  }

  function onMessage(event) {
    const message = JSON.parse(event.data);
    const mine = active && message.id === active.id;
    switch (message.type) {
      case "ready":
        ready = true;
        setStatus(`Connected as ${message.user}.`);
        updateButtons();
        if (sessionStorage.getItem(GENERATING)) resumeGenerating();
        break;
      case "start":
        if (!mine) break;
        active.conversationId = message.conversation_id;
        active.messageId = message.message_id;
        if (message.conversation_id) conversationId = message.conversation_id;
        remember();
        refreshList();
        break;
      case "delta":
        if (!mine) break;
        active.el.textContent += message.content;
        log.scrollTop = log.scrollHeight;
        break;
      case "tool_call":
        if (mine) addToolStep(message.tool_call_id, message.name, message.arguments, active.el);
        break;
      case "confirm":
        if (mine) askApproval(message.id, message.tool_call_id);
        break;
      case "tool_result":
        if (mine) showToolResult(message.tool_call_id, message.content);
        break;
      case "done":
        if (mine) finish("complete");
        break;
      case "cancelled":
        if (mine) finish("cancelled");
        break;
      case "error":
        if (mine) finish("error", message.error.message);
        else setStatus(message.error.message);
        break;
      default:
        break; // "pong" and anything newer
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${app.dataset.socketPath}`);
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", (event) => {
      ready = false;
      updateButtons();
      if (event.code === 4401) {
        setStatus("Signed out: reload the page to sign in again.");
        return;
      }
      // The answer goes on on the server; the next connection resumes it.
      if (active) {
        active.el.remove();
        active = null;
      }
      setStatus("Disconnected; reconnecting…");
      setTimeout(connect, 1000);
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || !ready || active) return;
    addMessage("user", text);
    active = { id: `chat-${++counter}`, el: addMessage("assistant", "", "streaming") };
    const message = { type: "chat", id: active.id, messages: [{ role: "user", content: text }] };
    if (conversationId) message.conversation_id = conversationId;
    send(message);
    prompt.value = "";
    updateButtons();
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => {
    if (active) send({ type: "cancel", id: active.id });
  });

  document.getElementById("new-chat").addEventListener("click", () => {
    if (active) return;
    conversationId = null;
    log.replaceChildren();
    remember();
    refreshList();
    prompt.focus();
  });

  list.addEventListener("click", (event) => {
    const item = event.target.closest("li");
    if (item && !active) openConversation(item.dataset.id);
  });

  // Show the open conversation at once; a generating answer is resumed once connected.
  if (conversationId && !sessionStorage.getItem(GENERATING)) {
    openConversation(conversationId).catch(() => {
      conversationId = null;
      remember();
    });
  }
  refreshList();
  connect();
})();
