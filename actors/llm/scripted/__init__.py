"""A scripted OpenAI-compatible HTTP server on loopback for tests and offline demos.

It is not a model: it answers each chat-completions request with the next step of a
script written in advance, and its model is named "scripted" in every answer.
It speaks real HTTP/1.1 (keep-alive, JSON and `stream: true` server-sent events with
tool-call deltas) so the real openai client talks to it exactly as to a provider:

    async with ScriptedLLMServer([Reply(content="hello")]) as server:
        settings = LlmSection(provider="scripted", base_url=server.base_url)
        ...
        server.bodies[0]["messages"]    # what the client sent

A step is a Reply (content and/or tool_calls, optional reasoning_content, usage,
finish_reason, delay), an ErrorReply (status, body, optional Retry-After, delay), the
same as a JSON object (an error step is one with a "status" key), or a callable taking
the request's JSON and returning a step. The script is a list of steps, used in order,
or one callable answering every request. Once a list is used up every further request
gets a 500 whose message says "script exhausted".

Offline demo, from a JSON file holding a list of steps:

    python -m actors.llm.scripted --port 8099 --script demo-script.json

    [{"content": "I will write it.", "tool_calls": [{"name": "write_file",
      "arguments": {"path": "hello.py", "content": "print('hi')\\n"}}]},
     {"content": "Done."}]

then point an entity at it with `[llm] provider = "scripted"` and
`base_url = "http://127.0.0.1:8099/v1"`. It listens on 127.0.0.1 only.
`--demo` instead of `--script` serves the demo model (actors/llm/demo.py), which answers
every request from the request itself and says in each answer that it is not a model.

Inside: script.py (the steps), server.py (listening and answering), answer.py (a reply in
the OpenAI format), wire.py (the HTTP/1.1 it speaks), __main__.py (the command line).
"""

from .script import ErrorReply, Reply, ScriptedToolCall, step_from_json
from .server import ScriptedLLMServer

__all__ = ["ErrorReply", "Reply", "ScriptedLLMServer", "ScriptedToolCall", "step_from_json"]
