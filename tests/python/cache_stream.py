#!/usr/bin/env python3
"""A streamed cache hit, read by the official OpenAI Python SDK, is the live answer.

Environment: TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1) and TOLLGATE_KEY, a
key of a project whose cache is on. Sends one live stream (a miss, stored once it
completed), then the same request streamed again, whole, and streamed without the
usage chunk: three hits. Exits non-zero on the first difference.
"""

import os

import openai

REQUEST = dict(
    model="tollgate-test",
    temperature=0,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream me."}],
)


def read(client, include_usage):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(stream=True, **REQUEST, **options)
    outcome = raw.headers.get("x-tollgate-cache")
    parts, usage, chunks, last = [], None, 0, None
    for chunk in raw.parse():
        chunks += 1
        last = chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
    return outcome, "".join(parts), usage, last, chunks


def main() -> None:
    client = openai.OpenAI(base_url=os.environ["TOLLGATE_BASE_URL"], api_key=os.environ["TOLLGATE_KEY"], max_retries=0)

    outcome, live_text, live_usage, _, live_chunks = read(client, True)
    assert outcome == "miss", outcome
    assert live_text and live_usage is not None, (live_text, live_usage)
    print(f"ok: live stream, {live_chunks} chunks, {len(live_text)} chars, usage {live_usage}", flush=True)

    # The miss is stored off the response path: poll (bounded) until it is a hit.
    for _ in range(100):
        outcome, text, usage, last, chunks = read(client, True)
        if outcome == "hit":
            break
    assert outcome == "hit", outcome
    assert text == live_text, (text, live_text)
    assert usage is not None and usage.model_dump() == live_usage.model_dump(), (usage, live_usage)
    assert last.choices == [] and last.usage is not None, f"the last chunk is not the usage chunk: {last!r}"
    print(f"ok: streamed hit, {chunks} chunks, same text and usage", flush=True)

    raw = client.chat.completions.with_raw_response.create(**REQUEST)
    assert raw.headers.get("x-tollgate-cache") == "hit", raw.headers
    assert raw.headers.get("age") is not None, raw.headers
    whole = raw.parse()
    assert whole.choices[0].message.content == live_text, whole
    assert whole.choices[0].finish_reason is not None, whole
    assert whole.usage.model_dump() == live_usage.model_dump(), (whole.usage, live_usage)
    print("ok: the stored stream answers a non-streamed request", flush=True)

    outcome, text, usage, _, _ = read(client, False)
    assert (outcome, text, usage) == ("hit", live_text, None), (outcome, text, usage)
    print("ok: a hit streamed without include_usage has no usage chunk", flush=True)


if __name__ == "__main__":
    main()
