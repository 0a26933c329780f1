#!/usr/bin/env python3
"""Reference renderings of the six real chat templates, made by transformers itself.

Run on the GPU machine (python3 + transformers 5.x + jinja2, no network needed):

    python3 tools/make_template_refs.py tests/fixtures/templates "$OUT/refs.json"

Reads tests/fixtures/templates/<name>.json (chat_template, bos_token, eos_token), renders every conversation below
with transformers' own chat-template renderer (transformers.utils.chat_template_utils.render_jinja_template, the
function apply_chat_template(tokenize=False) calls), and writes {"meta": ..., "cases": [...]} where each case holds
the template name, the inputs and either "expected" (the rendered string) or "error" (the message of the
TemplateError the template raised). Commit the output as tests/fixtures/templates/refs.json.

--jinja-only renders with a plain jinja2 environment configured like transformers' (for a local cross-check when
transformers is absent); the output then says renderer="jinja2-mirror" and must NOT be committed as refs.json.
"""
import json
import os
import sys

NAMES = ["llama3_2", "qwen2_5", "qwen3", "gemma2", "mistral_nemo", "phi3"]

SPECIAL = ("Quotes ' and \" and a backslash \\ and braces {{ not_a_tag }} {% raw %} <b>html</b> & amp\n"
           "Second line\twith tab\n\nAfter a blank line. Unicode: héllo wörld, 你好, Привет, emoji 🙂👍🏽, "
           "line sep\u2028here, nbsp\u00a0here")

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1},
                "ratio": {"type": "number", "default": 0.5},
                "detailed": {"type": "boolean"},
            },
            "required": ["city"],
        },
    },
}]


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def s(c):
    return {"role": "system", "content": c}


def conversations():
    """(case id, messages, add_generation_prompt, extra kwargs) shared by every template."""
    return [
        ("user_only_gen", [u("Hello!")], True, {}),
        ("user_only_nogen", [u("Hello!")], False, {}),
        ("system_user_gen", [s("You are a terse assistant."), u("What is 2+2?")], True, {}),
        ("system_multiturn_gen", [s("You are helpful."), u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")], True, {}),
        ("multiturn_nosystem_nogen", [u("First question"), a("First answer"), u("Second question"), a("Second answer")], False, {}),
        ("multiturn_nosystem_gen", [u("Q1"), a("A1"), u("Q2")], True, {}),
        ("special_chars", [u(SPECIAL)], True, {}),
        ("special_chars_history", [s("  padded system  \n"), u("  leading and trailing spaces  \n\n"), a("\nanswer with newlines\n\n"), u(SPECIAL)], True, {}),
        ("empty_content", [u("")], True, {}),
        ("system_first_alternation_error", [u("a"), u("b")], True, {}),
    ]


def specific(name):
    out = []
    if name in ("llama3_2", "qwen2_5", "qwen3", "mistral_nemo"):
        out.append(("tools", [u("What's the weather in Zürich?")], True, {"tools": TOOLS}))
    if name == "qwen2_5" or name == "qwen3":
        out.append(("tool_call_history", [
            u("Weather in Paris?"),
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "ratio": 0.25, "detailed": True, "note": "naïve \"quoted\""}}}]},
            {"role": "tool", "content": "{\"temp\": 21}"},
            {"role": "tool", "content": "sunny"},
        ], True, {"tools": TOOLS}))
    if name == "qwen3":
        out.append(("thinking_disabled", [s("Be brief."), u("Hi")], True, {"enable_thinking": False}))
        out.append(("thinking_enabled", [u("Hi")], True, {"enable_thinking": True}))
        out.append(("reasoning_history", [u("2+2?"), a("<think>\nsimple addition\n</think>\n\n4"), u("and 3+3?"), a("<think>\nagain\n</think>\n\n6")], False, {}))
        out.append(("reasoning_history_gen", [u("2+2?"), a("<think>\nsimple addition\n</think>\n\n4"), u("and 3+3?")], True, {"enable_thinking": False}))
    if name == "llama3_2":
        out.append(("tool_call_history", [
            u("Weather in Paris?"),
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
            {"role": "ipython", "content": {"temp": 21, "sky": "sunny"}},
        ], True, {"tools": TOOLS}))
        out.append(("tools_in_system", [s("sys"), u("Weather?")], True, {"tools": TOOLS, "tools_in_user_message": False}))
    if name == "mistral_nemo":
        out.append(("tool_call_history", [
            u("Weather in Paris?"),
            {"role": "assistant", "tool_calls": [{"id": "abc123xyz", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "tool_call_id": "abc123xyz", "content": "{\"temp\": 21}"},
            a("It is 21 degrees."),
            u("Thanks"),
        ], True, {"tools": TOOLS}))
    return out


def all_cases(name):
    cases = []
    for cid, msgs, gen, extra in conversations() + specific(name):
        if name == "llama3_2":
            extra = {"date_string": "26 Jul 2024", **extra}  # strftime_now would make the output depend on the day
        cases.append((cid, msgs, gen, extra))
    return cases


def make_renderer(jinja_only):
    if not jinja_only:
        import transformers
        from transformers.utils import chat_template_utils as ctu
        if hasattr(ctu, "render_jinja_template"):
            def render(template, msgs, gen, kwargs):
                res = ctu.render_jinja_template(conversations=[msgs], chat_template=template, add_generation_prompt=gen, **kwargs)
                out = res[0] if isinstance(res, tuple) else res  # (rendered list, generation indices) in 4.4x-5.x
                return out[0] if isinstance(out, list) else out
            return render, "transformers " + transformers.__version__ + " render_jinja_template"

        # Older/newer layouts: transformers' own compiled environment (same filters, globals and options).
        def render(template, msgs, gen, kwargs):
            kw = dict(kwargs)
            tools = kw.pop("tools", None)
            return ctu._compile_jinja_template(template).render(messages=msgs, tools=tools, documents=None, add_generation_prompt=gen, **kw)
        return render, "transformers " + transformers.__version__ + " _compile_jinja_template"
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from datetime import datetime

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)

    def render(template, msgs, gen, kwargs):
        kw = dict(kwargs)
        tools = kw.pop("tools", None)
        return env.from_string(template).render(messages=msgs, tools=tools, documents=None, add_generation_prompt=gen, **kw)
    return render, "jinja2-mirror " + jinja2.__version__


def main():
    args = [x for x in sys.argv[1:] if not x.startswith("--")]
    jinja_only = "--jinja-only" in sys.argv
    folder = args[0] if args else "tests/fixtures/templates"
    out_path = args[1] if len(args) > 1 else os.path.join(os.environ.get("OUT", "."), "refs.json")
    render, renderer = make_renderer(jinja_only)
    import jinja2
    cases = []
    for name in NAMES:
        with open(os.path.join(folder, name + ".json"), encoding="utf-8") as f:
            cfg = json.load(f)
        for cid, msgs, gen, extra in all_cases(name):
            kwargs = dict(extra)
            kwargs["bos_token"] = cfg["bos_token"]
            kwargs["eos_token"] = cfg["eos_token"]
            case = {"template": name, "id": cid, "messages": msgs, "add_generation_prompt": gen, "extra": extra}
            try:
                case["expected"] = render(cfg["chat_template"], msgs, gen, kwargs)
            except jinja2.exceptions.TemplateError as e:
                case["error"] = str(e)
            cases.append(case)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"meta": {"renderer": renderer}, "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(cases)} cases ({sum('error' in c for c in cases)} errors) to {out_path} using {renderer}")


if __name__ == "__main__":
    main()
