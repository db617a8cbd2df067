"""`sibo serve`: an OpenAI-compatible HTTP server for a SIBO model (engine: batching; api: the endpoints)."""
