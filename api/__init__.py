"""kbchat's HTTP API (``/api/v1``): the use cases over HTTP for scripts and other tools, with API keys."""
