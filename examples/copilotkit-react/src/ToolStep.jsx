// One tool call of the agent's, as the chat shows it: the tool, whether it has run, and
// what it returned (server tools send their result in the same run).
function pretty(result) {
  try {
    return JSON.stringify(JSON.parse(result), null, 2);
  } catch {
    return result;
  }
}

export default function ToolStep({ name, parameters, status, result }) {
  const done = status === "complete";
  const args = parameters && Object.keys(parameters).length ? JSON.stringify(parameters) : "";
  return (
    <div className="tool-step" data-tool={name} data-status={status}>
      <div className="tool-step-head">
        <code>
          {name}({args})
        </code>
        <span className="tool-step-status">{done ? "done" : "running…"}</span>
      </div>
      {done && <pre className="tool-step-result">{pretty(result)}</pre>}
    </div>
  );
}
