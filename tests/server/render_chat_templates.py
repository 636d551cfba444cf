"""Renders every chat template in chat_templates/ on every conversation of conversations.json with
Debian's python3-jinja2, set up as transformers' apply_chat_template sets it up
(ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loop controls, its
tojson filter, raise_exception and strftime_now globals). Also renders the one-construct templates
of snippets.json on the last conversation. Writes {template or "snippets": [{"output": ...} or
{"error": ..., "raised": bool}, ...]} as JSON: the expectations chat_template_test compares the C++
renderer with, byte for byte.

  render_chat_templates.py --out expected.json
"""
import argparse
import json
import pathlib
from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def make_environment():
    # As transformers' _compile_jinja_template.
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def sorted_keys(value):
    # The C++ side gets `extra` as nlohmann::json, whose objects iterate in sorted key order.
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def render(template, case):
    variables = sorted_keys(case.get("extra", {}))
    variables.update(messages=case["messages"], add_generation_prompt=case["add_generation_prompt"],
                     bos_token=case["bos_token"], eos_token=case["eos_token"])
    try:
        return {"output": template.render(**variables)}
    except TemplateError as e:
        return {"error": str(e), "raised": type(e) is TemplateError}
    except Exception as e:  # a runtime type error: the C++ renderer must fail too
        return {"error": f"{type(e).__name__}: {e}", "raised": False}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    here = pathlib.Path(__file__).resolve().parent
    conversations = json.loads((here / "chat_templates" / "conversations.json").read_text("utf-8"))
    env = make_environment()
    expected = {}
    for path in sorted((here / "chat_templates").glob("*.jinja")):
        template = env.from_string(path.read_text("utf-8"))
        results = [render(template, case) for case in conversations]
        expected[path.stem] = results
    # Short templates, one construct each, on the last conversation.
    snippets = json.loads((here / "chat_templates" / "snippets.json").read_text("utf-8"))
    expected["snippets"] = [render(env.from_string(s), conversations[-1]) for s in snippets]
    pathlib.Path(args.out).write_text(json.dumps(expected, ensure_ascii=False, indent=1), "utf-8")
    print(f"rendered {len(expected)} templates x {len(conversations)} conversations")


if __name__ == "__main__":
    main()
