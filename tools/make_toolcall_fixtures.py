"""Tool-call texts as the ChatGLM3 finetune_demo writes them, for reading them back.

Each case is a parameters object and the ```python\ntool_call(...)\n``` text that
finetune_demo's format_function_call builds from it (ast.Call of ast.Constant
keyword values, unparsed). Run with any Python >= 3.9:

    python3 tools/make_toolcall_fixtures.py > tests/fixtures/convert/tool_calls.json
"""
import ast
import json

CASES = [
    {},
    {"city": "北京"},
    {"q": "it's \"quoted\"", "path": "C:\\temp\\new", "nl": "a\nb\tc\r"},
    {"n": 3, "neg": -7, "f": 0.1, "tiny": 1e-07, "big": 12345678901234567890, "exp": -2.5e300},
    {"yes": True, "no": False, "none": None},
    {"tags": ["a", "b", 3, None], "nested": {"k": [1, {"deep": "值"}], "e": {}}, "empty": []},
    {"emoji": "🙂 ok", "ctrl": "\x00\x1f\x7f", "zw": "\u200b", "surrogate_free": "𝔘"},
    {"only_quote": "'", "both": "'\"", "backslash_end": "\\"},
    # floats with integral values and ints past 2^53: a double prints them otherwise
    {"one": 1.0, "negzero": -0.0, "e16": 1e16, "i17": 10000000000000000, "id": 123456789012345678},
]


def tool_call(parameters):
    call = ast.Call(
        func=ast.Name(id="tool_call"),
        args=[],
        keywords=[ast.keyword(arg=k, value=ast.Constant(v)) for k, v in parameters.items()],
    )
    return "```python\n" + ast.unparse(call).strip() + "\n```"


print(json.dumps([{"parameters": p, "text": tool_call(p)} for p in CASES], ensure_ascii=False, indent=1))
