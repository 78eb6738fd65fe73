import { CopilotKit } from "@copilotkit/react-core";
import { useDefaultRenderTool, useInterrupt } from "@copilotkit/react-core/v2";
import { CopilotChat } from "@copilotkit/react-ui";

import { headers, runtimeUrl } from "./config.js";
import Approval from "./Approval.jsx";
import ToolStep from "./ToolStep.jsx";

function Chat() {
  // The agent's tools (whoami, my_usage, …) run in Django; the chat shows each call the
  // model made, its status and the result the server sent back.
  useDefaultRenderTool({ render: ToolStep });
  // A confirm=True tool (forget_conversation) waits for a person: the run ends with an
  // AG-UI interrupt, shown below the messages until it is answered.
  useInterrupt({
    enabled: ({ value }) => value?.reason === "tool_confirmation",
    render: ({ interrupts, resolve }) => <Approval interrupts={interrupts} resolve={resolve} />,
  });
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
