import { useState } from "react";

// The server's question when the model calls a confirm=True tool (forget_conversation):
// the run ended with an AG-UI interrupt per waiting call; each answer is sent, as a
// `resume` entry with `{approved}`, by the next run, which runs or denies the call.
export default function Approval({ interrupts, resolve }) {
  const [answered, setAnswered] = useState({});
  const answer = (interrupt, approved) => {
    setAnswered((previous) => ({ ...previous, [interrupt.id]: approved }));
    // The run goes out once every open interrupt has its answer.
    resolve({ approved }, interrupt.id);
  };
  return interrupts.map((interrupt) => {
    const done = interrupt.id in answered;
    return (
      <div key={interrupt.id} className="approval" data-tool={interrupt.metadata?.toolName}>
        <p className="approval-message">{interrupt.message}</p>
        <div className="approval-buttons">
          <button type="button" disabled={done} onClick={() => answer(interrupt, true)}>
            Approve
          </button>
          <button type="button" disabled={done} onClick={() => answer(interrupt, false)}>
            Deny
          </button>
        </div>
      </div>
    );
  });
}
