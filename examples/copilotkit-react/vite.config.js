import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// `base: "./"` lets the built files be served from any path (Django static, a test URL).
// `npm run dev` proxies /copilotedge to the Django site, so the chat is same-origin.
export default defineConfig({
  base: "./",
  plugins: [react()],
  server: {
    proxy: {
      "/copilotedge": process.env.COPILOTEDGE_SITE ?? "http://127.0.0.1:8000",
    },
  },
});
