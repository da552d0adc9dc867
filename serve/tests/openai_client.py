"""Drives a running `serve` with the official `openai` client; prints what it saw as JSON.

Usage: openai_client.py BASE_URL PROMPT MAX_TOKENS
"""
import json
import sys

import openai
from openai import OpenAI

base, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
out = {}

model = client.models.list().data[0].id
out["model"] = model
messages = [{"role": "user", "content": prompt}]

r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
out["chat"] = r.choices[0].message.content
out["chat_finish"] = r.choices[0].finish_reason
out["chat_usage"] = r.usage.model_dump()

parts, finish, usage = [], None, None
for chunk in client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=max_tokens,
    stream=True, stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["chat_stream"] = "".join(parts)
out["chat_stream_chunks"] = len(parts)
out["chat_stream_finish"] = finish
out["chat_stream_usage"] = usage

# A stop string taken from the middle of the greedy reply cuts it just before.
text = out["chat"]
if len(text) >= 6:
    stop = text[3:6]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                       max_tokens=max_tokens, stop=[stop])
    out["stop"] = {"stop": stop, "text": r.choices[0].message.content, "finish": r.choices[0].finish_reason}
    parts = []
    for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                max_tokens=max_tokens, stop=stop, stream=True):
        parts.extend(c.delta.content or "" for c in chunk.choices)
    out["stop"]["stream_text"] = "".join(parts)

# n choices, seeded: the same seed gives the same texts.
seeded = [
    [c.message.content for c in client.chat.completions.create(
        model=model, messages=messages, temperature=1.0, top_p=0.9, n=3, seed=7, max_tokens=12).choices]
    for _ in range(2)
]
out["seeded"] = seeded

r = client.completions.create(model=model, prompt="Velmora is a town", temperature=0, max_tokens=10)
out["completion"] = r.choices[0].text
parts = [c.choices[0].text for c in client.completions.create(
    model=model, prompt="Velmora is a town", temperature=0, max_tokens=10, stream=True) if c.choices]
out["completion_stream"] = "".join(parts)

errors = {}
cases = {
    "unknown_model": dict(model="no-such-model", messages=messages),
    "negative_max_tokens": dict(model=model, messages=messages, max_tokens=-1),
    "too_long": dict(model=model, messages=[{"role": "user", "content": "Velmora trades salt. " * 2000}]),
}
for name, kw in cases.items():
    try:
        client.chat.completions.create(**kw)
        errors[name] = None
    except openai.APIStatusError as e:
        errors[name] = {"status": e.status_code, "code": e.code, "message": e.message}
out["errors"] = errors
print(json.dumps(out))
