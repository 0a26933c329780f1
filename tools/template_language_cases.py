#!/usr/bin/env python3
"""Jinja2 language cases for Calm's template interpreter, with expected output from real jinja2 configured as
transformers configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, HF tojson).

    python3 tools/template_language_cases.py tests/fixtures/templates/language_cases.json

Each case: {"template", "vars", "expected"} or {"template", "vars", "error": true} when jinja2 raises.
"""
import json
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from make_template_refs import make_renderer  # noqa: E402

V = {"msgs": [{"role": "system", "content": "S"}, {"role": "user", "content": "  hi  "}, {"role": "assistant", "content": "yo"}],
     "d": {"b": 2, "a": 1, "c": [1, 2]}, "s": "Hello World", "n": 7, "f": 2.5, "t": True, "none": None,
     "words": ["b", "a", "c"], "nums": [3, 1, 2], "u": "héllo 🙂"}

CASES = [
    # whitespace control
    "a\n{% if true %}\n  x\n{% endif %}\nb",
    "a\n    {% if true %}\n    x\n    {% endif %}\nb",
    "a  {%- if true -%}  x  {%- endif -%}  b",
    "a\n  {{- 'x' -}}  \nb",
    "a\n  {{ 'x' }}\n  b",
    "{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n",
    "a {%+ if true %}x{% endif %} b",
    "  {% if true +%}\nx{% endif %}",
    "{# comment #}\nx\n  {#- c2 -#}  y",
    "line1\nline2\n",
    "line1\n\n",
    "x {{ 'a' }} {% if true %} y {% endif %} z",
    "{% raw %}{{ not }} {% evaluated %}{% endraw %}",
    "  {% set x = 1 %}\n  {{ x }}",
    # literals and operators
    "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 4 / 2 }}",
    "{{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.0e-5 }} {{ 3.0 }} {{ 100.0 * 3 }} {{ 1/3 }}",
    "{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }}",
    "{{ 'it''s' }} {{ \"q\\\"x\" }} {{ 'tab\\tnl\\nend' }} {{ '\\u00e9\\x41' }} {{ 'back\\\\slash' }} {{ 'unk\\d' }}",
    "{{ none }} {{ true }} {{ false }} {{ True }} {{ [1, 'a', none, true, 2.0] }} {{ {'a': 1, 'b': [2]} }} {{ (1,) }} {{ (1, 2) }}",
    "{{ \"it's\" | list }} {{ ['it\\'s', 'say \"hi\"', 'both \\' \"'] }}",
    "{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ [1,2] == [1,2] }} {{ none == none }}",
    "{{ 'a' in 'cat' }} {{ 2 in [1,2] }} {{ 'b' in d }} {{ 'z' not in d }} {{ not 'a' in 'xyz' }}",
    "{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' and 'z' }} {{ none or [] }} {{ not none }}",
    "{{ 'yes' if t else 'no' }} {{ 'yes' if none else 'no' }} [{{ 'x' if false }}]",
    "{{ 1 + 2 ~ 3 }}",
    "{{ 2 * 3 ~ 4 }} {{ - 2 ** 2 }} {{ -n }} {{ +n }} {{ (1 + 2) ~ 3 }}",
    # subscripts and slices
    "{{ words[0] }} {{ words[-1] }} {{ words[1:] }} {{ words[:-1] }} {{ words[::-1] }} {{ words[::2] }} {{ s[::-1] }} {{ s[1:4] }} {{ s[-5:] }} {{ nums[5:] }} {{ nums[-10:2] }} {{ nums[2:0:-1] }}",
    "{{ d.a }} {{ d['b'] }} {{ d.c[1] }} {{ msgs[1].role }} {{ msgs[-1]['content'] }} {{ u[6] }} {{ u | length }}",
    "[{{ d.missing }}] [{{ words[10] }}] {{ d.missing is defined }} {{ d.a is defined }} {{ missing is undefined }}",
    # strings methods
    "{{ msgs[1].content.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\n\\nA\\n'.strip('\\n') }}",
    "{{ s.upper() }} {{ s.lower() }} {{ s.startswith('He') }} {{ s.endswith('xx') }} {{ s.startswith(('x', 'H')) }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}",
    "{{ 'a,b,,c'.split(',') }} {{ '  a  b \\n c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'x</think>y</think>z'.split('</think>')[-1] }} {{ 'abc'.split('b')[0] }}",
    "{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'hello'.find('l') }} {{ 'hello'.count('l') }} {{ '-'.join(['a', 'b']) }} {{ 'x'.join('abc') }}",
    "{{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }} {{ 'ab'.isupper() }} {{ 'a\\nb\\n'.splitlines() }} {{ 'prefix_x'.removeprefix('prefix_') }}",
    # filters
    "{{ '  x  ' | trim }}|{{ 'xyx' | trim('x') }}|{{ s | upper }}|{{ s | lower }}|{{ s | length }}|{{ words | length }}|{{ d | length }}|{{ s | replace('l', 'L') }}|{{ 'hello world' | title }}|{{ 'hello World' | capitalize }}",
    "{{ words | join }} {{ words | join(', ') }} {{ words | first }} {{ words | last }} {{ words | sort }} {{ nums | sort(reverse=true) }} {{ words | reverse | list }} {{ nums | min }} {{ nums | max }} {{ nums | sum }}",
    "{{ msgs | selectattr('role', 'equalto', 'user') | list }} {{ msgs | rejectattr('role', 'equalto', 'user') | map(attribute='role') | list }} {{ msgs | map(attribute='content') | join('/') }}",
    "{{ msgs | selectattr('tool_calls', 'undefined') | list | length }} {{ msgs | selectattr('role', 'in', ['user', 'system']) | list | length }} {{ nums | select('odd') | list }} {{ nums | reject('odd') | list }}",
    "{{ d | items | list }} {% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {{ d | dictsort }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('zz', 'def') }} {{ d.get('zz') }}",
    "{{ missing | default('dflt') }} {{ '' | default('dflt') }} {{ '' | default('dflt', true) }} {{ none | default('x') }} {{ 3.7 | int }} {{ '42' | int }} {{ 'x' | int }} {{ 3 | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 2.5 | round }}",
    "{{ [1, 2, 1, 3] | unique | list }} {{ n | string }} {{ words | map('upper') | list }} {{ nums | map('string') | join }} {{ [[1,2],[3]] | map('length') | list }}",
    "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'one two three' | wordcount }}|{{ '<a href=\"x\">&</a>' | e }}",
    # tojson (HF: json.dumps ensure_ascii=False)
    "{{ d | tojson }} {{ msgs[0] | tojson }} {{ [1, 2.5, none, true, 'é🙂\"\\\\\\n\\t'] | tojson }} {{ {} | tojson }} {{ [] | tojson }}",
    "{{ d | tojson(indent=2) }}\n{{ {'z': 1, 'a': [1, {'b': none}]} | tojson(indent=4) }}\n{{ d | tojson(sort_keys=true) }} {{ d | tojson(separators=(',', ':')) }}",
    "{{ {'x': 1.0, 'y': 1e-7, 'z': 12345678901234567890.0} | tojson }} {{ 'a<b>&' | tojson }}",
    # tests
    "{{ n is odd }} {{ n is even }} {{ n is divisibleby 7 }} {{ n is number }} {{ f is float }} {{ n is integer }} {{ t is boolean }} {{ t is true }} {{ false is false }} {{ 0 is false }}",
    "{{ s is string }} {{ d is mapping }} {{ words is iterable }} {{ s is iterable }} {{ n is iterable }} {{ missing is iterable }} {{ none is none }} {{ words is sequence }} {{ n is eq 7 }} {{ n is ne 7 }} {{ n is gt 3 }} {{ 'a' is in 'abc' }} {{ none is sameas none }} {{ s is lower }} {{ 'ab' is lower }}",
    "{{ n is not none }} {{ not n is none }} {{ missing is not defined }} {{ t is sameas true }}",
    # loops
    "{% for x in words %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ x }},{% endfor %}",
    "{% for x in words %}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }}{{ loop.cycle('o', 'e') }} {% endfor %}",
    "{% for x in nums if x > 1 %}{{ x }}:{{ loop.index }}/{{ loop.length }} {% endfor %}",
    "{% for x in [] %}x{% else %}empty{% endfor %} {% for x in nums %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}{% for c in 'ab' %}{{ c }}{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
    "{% for i in range(3) %}{{ i }}{% endfor %} {% for i in range(1, 10, 3) %}{{ i }}{% endfor %} {% for i in range(5, 0, -2) %}{{ i }}{% endfor %}",
    "{% for row in [[1, 2], [3]] %}{% for x in row %}{{ loop.index }}.{{ x }} {% endfor %}|{{ loop.index }} {% endfor %}",
    # scoping and namespace
    "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }} {% endfor %}{{ x }}",
    "{% set ns = namespace(total=0, seen=false) %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }} {{ ns.seen }}",
    "{% if true %}{% set y = 'inner' %}{% endif %}{{ y }}",
    "{% set a, b = [1, 2] %}{{ a }}{{ b }} {% set t = (1, 2) %}{{ t }} {% set blk %}captured {{ 1 + 1 }}{% endset %}[{{ blk }}]",
    # macros
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', '?') }} {{ greet(name='Kw', punct='.') }}",
    "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}{% endif %}{% endmacro %}{{ fact(5) }}",
    "{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}inside{% endcall %}",
    "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k=4) }}",
    "{% filter upper %}shout {{ 'this' }}{% endfilter %}",
    # output of odd values
    "{{ missing }}|{{ d }}|{{ nums }}|{{ 'a' ~ missing ~ 'b' }}|{{ f }}|{{ 10 / 4 }}|{{ -0.0 }}|{{ 1e16 }}|{{ 123456789.123 }}",
    # errors (jinja2 raises)
    "{{ missing.attr }}",
    "{{ 'a' + 1 }}",
    "{{ 1 / 0 }}",
    "{% if %}x{% endif %}",
    "{% for x in y %}",
    "{{ raise_exception('custom message') }}",
    "{{ 'a' + missing }}",
    "{% endif %}",
    "{{ 1 < 'a' }}",
    "{{ x | nosuchfilter }}",
]


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "language_cases.json"
    import jinja2
    render, renderer = make_renderer(jinja_only=True)
    cases = []
    for tpl in CASES:
        case = {"template": tpl, "vars": V}
        try:
            kw = dict(V)
            case["expected"] = render(tpl, kw.pop("msgs"), False, {**kw, "msgs": V["msgs"]})
        except (jinja2.exceptions.TemplateError, TypeError, ZeroDivisionError) as e:
            case["error"] = True
            case["python_error"] = f"{type(e).__name__}: {e}"
        cases.append({k: v for k, v in case.items() if k != "vars"})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"meta": {"renderer": renderer}, "vars": V, "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(cases)} cases ({sum('error' in c for c in cases)} errors) to {out_path}")


if __name__ == "__main__":
    main()
