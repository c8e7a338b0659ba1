"""The official OpenAI Python client against `tandem serve --llm`, unchanged but for its
base URL: chat completions whole and streamed (greedy text equal to `tandem generate`'s),
n choices with a seed, logprobs, legacy completions, the model list, and an error.

Usage: openai_client.py BASE_URL QUESTION EXPECTED_GREEDY_TEXT  (run by tests/llm_serve.rs)
"""

import sys

import openai

base_url, question, expected = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
messages = [{"role": "user", "content": question}]

models = [m.id for m in client.models.list()]
assert "smollm2" in models, models

whole = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24, temperature=0)
text = whole.choices[0].message.content
assert text == expected, f"whole: {text!r} != tandem generate's {expected!r}"
assert whole.usage.completion_tokens == 24 or whole.choices[0].finish_reason == "stop", whole.usage
print("chat, whole:", repr(text))

pieces, finish, usage = [], None, None
for chunk in client.chat.completions.create(
    model="smollm2", messages=messages, max_tokens=24, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
assert "".join(pieces) == expected, f"streamed: {''.join(pieces)!r}"
assert finish in ("length", "stop") and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
print("chat, streamed: equal, finish", finish, "usage", usage.total_tokens)

sampled = client.chat.completions.create(
    model="smollm2", messages=messages, max_tokens=12, temperature=0.9, seed=11, n=3, logprobs=True, top_logprobs=3,
)
again = client.chat.completions.create(
    model="smollm2", messages=messages, max_tokens=12, temperature=0.9, seed=11, n=3, logprobs=True, top_logprobs=3,
)
assert len(sampled.choices) == 3
assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
for c in sampled.choices:
    lps = c.logprobs.content
    assert lps and all(t.logprob <= 0 and len(t.top_logprobs) <= 3 for t in lps)
print("n=3 seeded:", [c.message.content for c in sampled.choices])

completion = client.completions.create(model="smollm2", prompt="Running shoes are", max_tokens=8, temperature=0)
assert completion.choices[0].text and completion.object == "text_completion"
print("completion:", repr(completion.choices[0].text))

try:
    client.chat.completions.create(model="smollm2", messages=messages, max_tokens=100000)
    raise AssertionError("max_tokens past the context was accepted")
except openai.APIStatusError as e:
    assert e.status_code == 422 and "positions" in str(e), e
    print("error:", e.status_code, e.message)
print("ok")
