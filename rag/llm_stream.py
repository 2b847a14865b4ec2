"""One streaming chat request read by a background thread, so its caller can wait with deadlines and stop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

from infra.settings import get_settings
from rag import llm_client

POLL_SECONDS = 0.1  # how often a wait looks at the stop flag


class StreamRequest:
    """One streaming request read by a background thread, so the caller can wait with deadlines and stop.

    When the caller gives up, the thread notices at the next chunk (or when the read times out), stops
    reading and closes the response, which tells the server to stop generating.
    """

    def __init__(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> None:
        settings = get_settings()
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cancelled = threading.Event()
        self._pieces = llm_client.stream_chat(llm_client.shared_client(), messages, max_tokens=max_tokens,
                                              temperature=temperature, timeout=settings.llm_timeout_seconds)
        self._pending: tuple[str, Any] | None = None  # an item read past the tokens handed out together
        self._thread = threading.Thread(target=self._run, name="kbchat-llm", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with closing(self._pieces):  # closing ends the response: the server stops generating
                for piece in self._pieces:
                    if self.cancelled.is_set():
                        break
                    self.items.put(("token", piece))
            self.items.put(("end", None))
        except Exception as exc:  # handed to the caller, who classifies it
            self.items.put(("error", exc))

    def next(self, deadline: float, should_stop: Callable[[], bool] | None) -> tuple[str, Any]:
        """The next ("token" | "end" | "error", value), ("timeout", None) at the deadline, or ("stopped", None)
        (the request cancelled) once ``should_stop`` says so. Tokens that have already arrived come as one
        piece: a busy worker then writes one stream entry for them instead of one each (it never waits for more)."""
        while True:
            if should_stop is not None and should_stop():
                self.cancel()
                return "stopped", None
            if self._pending is not None:
                item, self._pending = self._pending, None
                return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            try:
                kind, value = self.items.get(timeout=min(remaining, POLL_SECONDS if should_stop else remaining))
            except queue.Empty:
                continue
            if kind != "token":
                return kind, value
            return "token", value + self._arrived_tokens()

    def _arrived_tokens(self) -> str:
        pieces: list[str] = []
        while True:
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                break
            if item[0] != "token":
                self._pending = item
                break
            pieces.append(item[1])
        return "".join(pieces)

    def cancel(self) -> None:
        self.cancelled.set()
