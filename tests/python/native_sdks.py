#!/usr/bin/env python3
"""The official Anthropic SDK against tollgate's /v1/messages (and count_tokens), and the OpenAI SDK's
Responses API and model retrieval, through a running tollgate.

Environment:
  TOLLGATE_URL          e.g. http://127.0.0.1:8080 (no /v1: each SDK adds its own)
  TOLLGATE_KEY          a valid tollgate API key
  TOLLGATE_LIMITED_KEY  a key with one request left: its second call must be refused

Prints one line per check and exits non-zero on the first failure.
"""

import os

import anthropic
import openai


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def main() -> None:
    url = os.environ["TOLLGATE_URL"].rstrip("/")
    key = os.environ["TOLLGATE_KEY"]
    limited = os.environ["TOLLGATE_LIMITED_KEY"]

    # --- Anthropic: the SDK sends the tollgate key as x-api-key. No retries: a
    # retried request would hide errors and double-count usage.
    claude = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    message = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert message.type == "message", message
    assert message.content[0].text == "Hello from the tollgate mock upstream.", message.content
    assert is_positive_int(message.usage.input_tokens), message.usage
    assert is_positive_int(message.usage.output_tokens), message.usage
    ok("anthropic messages.create")

    with claude.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the tollgate mock upstream.", text
    assert is_positive_int(final.usage.input_tokens), final.usage
    assert is_positive_int(final.usage.output_tokens), final.usage
    ok("anthropic messages.stream")

    # A stream the upstream breaks off ends with tollgate's Anthropic `error` event,
    # which the SDK raises instead of returning a truncated message.
    try:
        with claude.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_headers={"x-mock-fault": "reset"},
        ) as stream:
            "".join(stream.text_stream)
        raise AssertionError("a broken stream ended without an error")
    except anthropic.APIStatusError as e:
        # The event's error object (str(e) has only its message and type in 2.17).
        body = e.body if isinstance(e.body, dict) else {}
        error = body["error"] if isinstance(body.get("error"), dict) else body
        assert error.get("code") == "upstream_stream_broken", (e, e.body)
        assert error.get("type") == "api_error", e.body
    ok("anthropic raises on a broken stream")

    counted = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}])
    assert is_positive_int(counted.input_tokens), counted
    ok("anthropic messages.count_tokens")

    refused = anthropic.Anthropic(base_url=url, api_key=limited, max_retries=0)
    refused.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "1"}])
    try:
        refused.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "2"}])
        raise AssertionError("the second request of a key with one request left was not refused")
    except anthropic.RateLimitError as e:
        body = e.body
        assert body["type"] == "error", body
        assert body["error"]["type"] == "rate_limit_error", body
        assert body["error"]["code"] == "quota_exceeded", body
        assert body["error"]["details"]["limit"] == 1, body
        assert e.response.headers.get("retry-after"), e.response.headers
    ok("anthropic RateLimitError on a tollgate quota")

    try:
        anthropic.Anthropic(base_url=url, api_key="tg_not_a_key", max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        raise AssertionError("an unknown key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    ok("anthropic AuthenticationError on an unknown key")

    # --- OpenAI: the Responses API and model retrieval.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    response = client.responses.create(model="gpt-4o-mini", input="Say hello.")
    assert response.output_text == "Hello from the tollgate mock upstream.", response
    assert is_positive_int(response.usage.input_tokens), response.usage
    assert is_positive_int(response.usage.output_tokens), response.usage
    ok("openai responses.create")

    events = list(client.responses.create(model="gpt-4o-mini", input="Say hello.", stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello from the tollgate mock upstream.", deltas
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1, [e.type for e in events]
    assert is_positive_int(completed[0].response.usage.output_tokens), completed[0].response.usage
    ok("openai responses.create(stream=True)")

    try:
        for _ in client.responses.create(
            model="gpt-4o-mini", input="Say hello.", stream=True, extra_headers={"x-mock-fault": "reset"}
        ):
            pass
        raise AssertionError("a broken Responses stream ended without an error")
    except openai.APIError as e:
        assert "broke off" in str(e), e
    ok("openai raises on a broken Responses stream")

    model = client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini", model
    try:
        client.models.retrieve("no-such-model")
        raise AssertionError("an unknown model was found")
    except openai.NotFoundError:
        pass
    ok("openai models.retrieve")


if __name__ == "__main__":
    main()
