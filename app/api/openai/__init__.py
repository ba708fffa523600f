"""The OpenAI-compatible front end (`/v1`), laid out as vLLM lays out its entrypoints: routes, the
protocol (request and response bodies), serving (an adapter on app/api/submission.py), errors in
OpenAI's shape, and the text a completion streams."""
