import { CopilotKit } from "@copilotkit/react-core";
import { CopilotChat } from "@copilotkit/react-ui";

import { headers, runtimeUrl } from "./config.js";

export default function App() {
  return (
    <CopilotKit runtimeUrl={runtimeUrl} headers={headers} credentials="same-origin" agent="default">
      <main className="page">
        <h1>copilotedge × CopilotKit</h1>
        <p className="hint">
          This chat talks to Django at <code>{runtimeUrl}</code>, which streams from Workers AI.
        </p>
        <CopilotChat
          className="chat"
          labels={{ title: "copilotedge", initial: "Ask me anything." }}
        />
      </main>
    </CopilotKit>
  );
}
