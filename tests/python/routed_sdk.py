#!/usr/bin/env python3
"""The official OpenAI SDK through tollgate's routes: a chat completion with tools routed to
Claude (translated to Anthropic's Messages and back), plain and streamed, and an alias whose
first target fails (tollgate falls back; the SDK sees one clean answer).

Environment:
  TOLLGATE_URL  e.g. http://127.0.0.1:8080 (no /v1)
  TOLLGATE_KEY  a valid tollgate API key
  TOOL_TRIGGER  the text that makes the mock call a tool

Prints one line per check and exits non-zero on the first failure.
"""

import json
import os

import openai

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def main() -> None:
    url = os.environ["TOLLGATE_URL"].rstrip("/") + "/v1"
    trigger = os.environ["TOOL_TRIGGER"]
    # No retries: a retried request would hide errors and double-count usage.
    client = openai.OpenAI(base_url=url, api_key=os.environ["TOLLGATE_KEY"], max_retries=0)

    reply = client.chat.completions.create(
        model="smart", tools=TOOLS, messages=[{"role": "user", "content": f"Please {trigger} for Paris"}]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", reply
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", reply
    assert json.loads(call.function.arguments)["city"] == "Paris", reply
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0, reply
    ok("chat.completions.create with tools, routed to Claude: tool_calls back")

    reply = client.chat.completions.create(
        model="smart",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
        ],
    )
    assert reply.choices[0].message.content, reply
    ok("the tool's result sent back as a tool message: a text answer")

    arguments, usage = "", None
    stream = client.chat.completions.create(
        model="smart", tools=TOOLS, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": trigger}],
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                arguments += delta.function.arguments or ""
    assert json.loads(arguments)["city"] == "Paris", arguments
    assert usage is not None and usage.completion_tokens > 0, usage
    ok("streamed with tools: the arguments in pieces and the usage chunk")

    reply = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Hi"}])
    assert reply.model == "gpt-4o", reply
    ok("an alias whose first target fails: one clean answer from the fallback")


if __name__ == "__main__":
    main()
