import { CopilotKit } from "@copilotkit/react-core";
import { useDefaultRenderTool } from "@copilotkit/react-core/v2";
import { CopilotChat } from "@copilotkit/react-ui";

import { headers, runtimeUrl } from "./config.js";
import ToolStep from "./ToolStep.jsx";

function Chat() {
  // The agent's tools (whoami, my_usage, …) run in Django; the chat shows each call the
  // model made, its status and the result the server sent back.
  useDefaultRenderTool({ render: ToolStep });
  return (
    <CopilotChat className="chat" labels={{ title: "copilotedge", initial: "Ask me anything." }} />
  );
}

export default function App() {
  return (
    <CopilotKit runtimeUrl={runtimeUrl} headers={headers} credentials="same-origin" agent="default">
      <main className="page">
        <h1>copilotedge × CopilotKit</h1>
        <p className="hint">
          This chat talks to Django at <code>{runtimeUrl}</code>, which streams from Workers AI.
        </p>
        <Chat />
      </main>
    </CopilotKit>
  );
}
