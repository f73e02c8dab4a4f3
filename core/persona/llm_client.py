"""A client for any OpenAI-compatible chat endpoint (a local llama.cpp server, or a hosted API the user names) that writes summary candidates; its key never follows a redirect to another origin."""

from __future__ import annotations

import json
import urllib.request

from idiolect.core.base.errors import IdiolectError


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the endpoint's origin: the key never goes to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        from urllib.parse import urlsplit

        old, new = urlsplit(req.full_url), urlsplit(newurl)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise IdiolectError(
                f"the summary writer redirected to another host ({new.scheme}://{new.hostname}); not following it "
                "with your key: use the final address as --llm-url"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def openai_compatible_writer(url: str, api_key: str | None, model: str):
    """A ``writer`` that asks an OpenAI-compatible chat endpoint (``url`` up to /v1). The key is sent in the
    Authorization header only, never to another origin (a redirect elsewhere is refused), never logged or
    stored: an answer that contains it has it removed. Any failure of the endpoint is one line."""
    opener = urllib.request.build_opener(_SameOriginRedirects())

    def write(prompt: str, seed: int = 0) -> str:
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.7,
                "seed": seed,
            }
        ).encode()
        req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        if api_key:
            req.add_unredirected_header("Authorization", f"Bearer {api_key}")
        try:
            with opener.open(req, timeout=120) as resp:
                raw = resp.read(8 * 1024 * 1024)
                kind = resp.headers.get("Content-Type", "")
        except OSError as exc:
            raise IdiolectError(
                f"the summary writer at {url} did not answer: {getattr(exc, 'reason', exc)}"
            ) from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise IdiolectError(
                f"the summary writer at {url} did not answer as an OpenAI-compatible endpoint "
                f"({kind or 'no content type'}, {len(raw)} bytes); check --llm-url (it ends before /chat/completions)"
            ) from None
        return content.replace(api_key, "[key removed]") if api_key else content

    return write
