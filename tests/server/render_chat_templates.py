"""Renders every chat template in chat_templates/ on every conversation of conversations.json with
Debian's python3-jinja2, set up as transformers' apply_chat_template sets it up
(ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loop controls, its
tojson filter and raise_exception global). Writes {template: [{"output": ...} or {"error": ...,
"raised": bool}, ...]} as JSON: the expectations chat_template_test compares the C++ renderer with,
byte for byte.

  render_chat_templates.py --out expected.json
"""
import argparse
import json
import pathlib

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

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def sorted_object(pairs):
    # The C++ side gets `extra` as nlohmann::json, whose objects iterate in sorted key order.
    return dict(sorted(pairs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    here = pathlib.Path(__file__).resolve().parent
    conversations = json.loads((here / "chat_templates" / "conversations.json").read_text("utf-8"),
                               object_pairs_hook=sorted_object)
    env = make_environment()
    expected = {}
    for path in sorted((here / "chat_templates").glob("*.jinja")):
        template = env.from_string(path.read_text("utf-8"))
        results = []
        for case in conversations:
            variables = dict(case.get("extra", {}))
            variables.update(messages=case["messages"],
                             add_generation_prompt=case["add_generation_prompt"],
                             bos_token=case["bos_token"], eos_token=case["eos_token"])
            try:
                results.append({"output": template.render(**variables)})
            except TemplateError as e:
                results.append({"error": str(e), "raised": type(e) is TemplateError})
            except Exception as e:  # a runtime type error: the C++ renderer must fail too
                results.append({"error": f"{type(e).__name__}: {e}", "raised": False})
        expected[path.stem] = results
    pathlib.Path(args.out).write_text(json.dumps(expected, ensure_ascii=False, indent=1), "utf-8")
    print(f"rendered {len(expected)} templates x {len(conversations)} conversations")


if __name__ == "__main__":
    main()
