// Where the Django endpoint is and how to authenticate to it.
//
// runtimeUrl: `?runtimeUrl=` in the page URL, else VITE_COPILOTEDGE_RUNTIME_URL at build
// time, else the same-origin default the demo site mounts.
// Auth: an API key from `?key=` (handy for local trials; a key in a page is visible to
// whoever uses it), else the Django session, whose CSRF token is sent from its cookie.
const params = new URLSearchParams(window.location.search);

export const runtimeUrl =
  params.get("runtimeUrl") ??
  import.meta.env.VITE_COPILOTEDGE_RUNTIME_URL ??
  "/copilotedge/copilotkit";

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|; )${name}=([^;]*)`));
  return match ? decodeURIComponent(match[1]) : null;
}

export function headers() {
  const key = params.get("key");
  if (key) return { Authorization: `Bearer ${key}` };
  const csrf = cookie("csrftoken");
  return csrf ? { "X-CSRFToken": csrf } : {};
}
