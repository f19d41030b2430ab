#!/usr/bin/env python3
"""Smoke test: the official OpenAI Python SDK against a running tollgate.

Environment:
  TOLLGATE_BASE_URL   e.g. http://127.0.0.1:8080/v1
  TOLLGATE_KEY        a valid tollgate API key
  TOLLGATE_STREAMING  "1" to also check streaming with include_usage

Prints one line per check and exits non-zero on the first failure.
"""

import os
import sys

import openai


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def is_positive_int(value) -> bool:
    # bool is an int subclass; a True token count would be a bug, not a pass.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def main() -> None:
    base_url = os.environ["TOLLGATE_BASE_URL"]
    key = os.environ["TOLLGATE_KEY"]
    # No retries: a retried request would hide errors and double-count usage.
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)

    resp = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert resp.usage is not None, "chat completion has no usage"
    assert is_positive_int(resp.usage.prompt_tokens), resp.usage
    assert is_positive_int(resp.usage.completion_tokens), resp.usage
    content = resp.choices[0].message.content
    assert isinstance(content, str) and content, f"empty content: {resp!r}"
    ok(
        f"chat completion: {len(content)} chars, usage "
        f"{resp.usage.prompt_tokens}+{resp.usage.completion_tokens}"
    )

    models = [m.id for m in client.models.list()]
    assert models, "models list is empty"
    ok(f"models list: {', '.join(models)}")

    emb = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(emb.data) == 1, emb
    vector = emb.data[0].embedding
    assert len(vector) > 0 and all(isinstance(x, float) for x in vector), vector
    ok(f"embedding: {len(vector)} dimensions")

    if os.environ.get("TOLLGATE_STREAMING") == "1":
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        last = None
        for chunk in stream:
            last = chunk
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
        text = "".join(parts)
        assert text, "streamed content is empty"
        assert last is not None, "stream had no chunks"
        assert last.choices == [], f"last chunk is not the usage chunk: {last!r}"
        assert last.usage is not None, f"last chunk has no usage: {last!r}"
        assert is_positive_int(last.usage.prompt_tokens), last.usage
        assert is_positive_int(last.usage.completion_tokens), last.usage
        ok(
            f"streaming chat: {len(text)} chars, usage "
            f"{last.usage.prompt_tokens}+{last.usage.completion_tokens}"
        )

    bad = openai.OpenAI(base_url=base_url, api_key="tg-wrong-key", max_retries=0)
    try:
        bad.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello."}],
        )
    except openai.AuthenticationError as err:
        assert err.status_code == 401, err.status_code
        ok("wrong key rejected with 401 AuthenticationError")
    else:
        raise AssertionError("a wrong key was accepted")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as err:
        print(f"FAIL: {err}", file=sys.stderr, flush=True)
        raise
