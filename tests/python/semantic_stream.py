#!/usr/bin/env python3
"""A streamed semantic cache hit, read by the official OpenAI Python SDK, is the live
answer to the question it paraphrases.

Environment: TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1) and TOLLGATE_KEY, a
key of a project whose cache and semantic cache are on (threshold 0.9). Sends one
live stream (a miss, stored once it completed), then a paraphrase streamed (a
semantic hit: same text and usage, the usage chunk last) and whole. Exits non-zero on
the first difference.
"""

import os

import openai

SYSTEM = {"role": "system", "content": "Be brief."}
LIVE = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
PARAPHRASE = [SYSTEM, {"role": "user", "content": "what is the capital of France, please?"}]


def read(client, messages):
    raw = client.chat.completions.with_raw_response.create(
        model="tollgate-test", temperature=0, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    headers = raw.headers
    parts, usage, last = [], None, None
    for chunk in raw.parse():
        last = chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
    return headers, "".join(parts), usage, last


def main() -> None:
    client = openai.OpenAI(base_url=os.environ["TOLLGATE_BASE_URL"], api_key=os.environ["TOLLGATE_KEY"], max_retries=0)

    headers, live_text, live_usage, _ = read(client, LIVE)
    assert headers.get("x-tollgate-cache") == "miss", headers
    assert live_text and live_usage is not None, (live_text, live_usage)
    print(f"ok: live stream, {len(live_text)} chars, usage {live_usage}", flush=True)

    # The miss is stored off the response path: poll (bounded) until the paraphrase hits.
    for _ in range(100):
        headers, text, usage, last = read(client, PARAPHRASE)
        if headers.get("x-tollgate-cache") == "hit":
            break
    assert headers.get("x-tollgate-cache") == "hit", headers
    assert headers.get("x-tollgate-cache-kind") == "semantic", headers
    assert float(headers.get("x-tollgate-cache-similarity")) >= 0.9, headers
    assert text == live_text, (text, live_text)
    assert usage is not None and usage.model_dump() == live_usage.model_dump(), (usage, live_usage)
    assert last.choices == [] and last.usage is not None, f"the last chunk is not the usage chunk: {last!r}"
    print("ok: streamed semantic hit, same text and usage", flush=True)

    raw = client.chat.completions.with_raw_response.create(model="tollgate-test", temperature=0, messages=PARAPHRASE)
    assert raw.headers.get("x-tollgate-cache-kind") == "semantic", raw.headers
    whole = raw.parse()
    assert whole.choices[0].message.content == live_text, whole
    assert whole.usage.model_dump() == live_usage.model_dump(), (whole.usage, live_usage)
    print("ok: the stored stream answers a non-streamed paraphrase", flush=True)


if __name__ == "__main__":
    main()
