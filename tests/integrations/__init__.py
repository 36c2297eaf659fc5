"""Web-framework integrations served by real uvicorn (issue 8)."""
