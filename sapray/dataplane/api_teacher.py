"""Teachers that write candidate responses: an OpenAI-compatible endpoint, as a Ray Data stage.

(vLLM and hf teachers reuse ``sapray.dataplane.actors.GenerateActor``; a ``file`` teacher is read as is.)

The API stage sends each row's chat messages to ``{base_url}/chat/completions`` with bounded
concurrency, a per-request timeout, a rate limit (requests per second, shared by the actor's threads)
and retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped connections, waiting
at least as long as a server's ``Retry-After`` asks. Other 4xx answers are permanent: the row comes back
with the error, and the caller writes it to the rejects file. The API key is read from the driver's
environment variable that the config names and reaches the actors as a masked constructor argument:
not through ``runtime_env``, whose ``env_vars`` Ray writes to its session logs.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RateLimiter:
    """At most ``per_second`` request starts per second across threads (None: unlimited)."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))


def retry_after_seconds(header: str | None, cap_s: float = 60.0) -> float | None:
    """A 429/503 ``Retry-After`` in seconds (the delta form; the HTTP-date form is ignored), capped."""
    try:
        return min(max(float(header), 0.0), cap_s) if header else None
    except ValueError:
        return None


class Secret:
    """A value that does not print: its repr and str are masked, so no log or error message shows it."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class ApiTeacherActor:
    """Rows: row_id, messages_json -> texts (n samples), finish reasons, token counts, error, attempts."""

    def __init__(self, base_url: str, model: str, api_key: Secret | None, sampling: dict[str, Any],
                 max_concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 5,
                 requests_per_second: float | None = None, backoff_s: float = 0.5, num_cpus: float = 1) -> None:
        import httpx

        # num_cpus (the Ray reservation) does not bound this stage: its threads wait on the network.

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.sampling = model, sampling
        self.headers = {"Authorization": f"Bearer {api_key.reveal()}"} if api_key else {}
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency)
        self.client = httpx.Client(timeout=timeout_s)
        self.limiter = RateLimiter(requests_per_second)

    def _body(self, messages: list[dict]) -> dict:
        s = self.sampling
        body = {"model": self.model, "messages": messages, "n": s.get("n", 1), "temperature": s.get("temperature", 0.0),
                "top_p": s.get("top_p", 1.0), "max_tokens": s.get("max_tokens", 256)}
        if s.get("seed") is not None:
            body["seed"] = s["seed"]
        if s.get("stop"):
            body["stop"] = s["stop"]
        return body

    def _call(self, messages: list[dict]) -> dict:
        import httpx

        attempts, last = 0, ""
        while True:
            attempts += 1
            self.limiter.wait()
            server_wait = None
            try:
                response = self.client.post(self.url, json=self._body(messages), headers=self.headers)
                if response.status_code == 200:
                    data = response.json()
                    usage = data.get("usage") or {}
                    choices = sorted(data["choices"], key=lambda c: c["index"])
                    return {"texts": [c["message"]["content"] or "" for c in choices],
                            "finish_reasons": [c.get("finish_reason") or "stop" for c in choices],
                            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                            "completion_tokens": int(usage.get("completion_tokens", 0)), "error": "",
                            "attempts": attempts}
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                retry = response.status_code in RETRY_STATUS
                server_wait = retry_after_seconds(response.headers.get("Retry-After"))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last, retry = f"{type(exc).__name__}: {exc}"[:200], True
            except (ValueError, KeyError, TypeError) as exc:
                last, retry = f"malformed response: {exc}"[:200], False
            if not retry or attempts > self.max_retries:
                verdict = "gave up after retries" if retry else "permanent error"
                return {"texts": [], "finish_reasons": [], "prompt_tokens": 0, "completion_tokens": 0,
                        "attempts": attempts,
                        "error": f"{verdict} ({attempts} attempt(s)): {last}"}
            backoff = self.backoff_s * 2 ** (attempts - 1) * (0.5 + random.random())
            time.sleep(max(backoff, server_wait or 0.0))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results = list(self.pool.map(lambda m: self._call(json.loads(m)), batch["messages_json"]))
        passed = {k: v for k, v in batch.items() if k != "messages_json"}  # the row's other columns pass through
        return {**passed, **{k: [r[k] for r in results] for k in results[0]}}
