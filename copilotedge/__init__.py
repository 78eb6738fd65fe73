"""copilotedge: Cloudflare Workers AI for Django sites (OpenAI, CopilotKit, WebSocket)."""

__version__ = "0.1.0"
