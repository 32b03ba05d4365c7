"""A renderer for the subset of Helm's templates that deploy/helm/meshcompute uses, so that
the chart's output can be checked against Kubernetes' schemas without the helm binary.

Supported: text with ``{{ ... }}`` actions and ``{{-``/``-}}`` whitespace trimming;
``if``/``else``/``end``; values ``.Values.a.b``, ``.Release.Name``, ``.Release.Namespace``,
``.Chart.Name``, ``.Chart.Version``, ``.Chart.AppVersion``, string and number literals;
pipelines of the functions ``quote``, ``toYaml``, ``nindent``, ``indent``, ``default``,
``required``, ``b64enc`` and ``not``.  Anything else raises, so a template that strays
outside the subset fails its test instead of rendering wrongly.  A ``.Values`` path that
does not exist raises too (Helm would render nothing: a typo).
"""

from __future__ import annotations

import base64
import copy
import json
import pathlib
import re
import shlex
from typing import Any

import yaml

_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


class TemplateError(Exception):
    pass


def _truthy(v: Any) -> bool:
    return bool(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v != 0


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _to_yaml(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=False).rstrip("\n") if v not in ({}, []) \
        else json.dumps(v)


def _required(msg: str, v: Any) -> Any:
    if not _truthy(v):
        raise TemplateError(msg)
    return v


FUNCTIONS = {
    "quote": lambda v: json.dumps(_text(v)),
    "toYaml": _to_yaml,
    "nindent": lambda n, s: "\n" + "\n".join(" " * int(n) + line if line else line for line in _text(s).split("\n")),
    "indent": lambda n, s: "\n".join(" " * int(n) + line if line else line for line in _text(s).split("\n")),
    "default": lambda d, v: v if _truthy(v) else d,
    "required": _required,
    "b64enc": lambda s: base64.b64encode(_text(s).encode()).decode(),
    "not": lambda v: not _truthy(v),
}


def _lookup(path: str, scope: dict) -> Any:
    parts = path.lstrip(".").split(".")
    if parts[0] not in scope:
        raise TemplateError(f"unknown object .{parts[0]}")
    v = scope[parts[0]]
    for i, p in enumerate(parts[1:], 1):
        if not isinstance(v, dict) or p not in v:
            raise TemplateError(f"no value at .{'.'.join(parts[:i + 1])}")
        v = v[p]
    return v


def _term(tok: str, scope: dict) -> Any:
    if tok.startswith("."):
        return _lookup(tok, scope)
    if tok.startswith('"'):
        return json.loads(tok)
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if tok in ("true", "false"):
        return tok == "true"
    raise TemplateError(f"unsupported term {tok!r}")


def _pipeline(expr: str, scope: dict) -> Any:
    value: Any = None
    for i, command in enumerate(c.strip() for c in expr.split("|")):
        lexer = shlex.shlex(command, posix=False)
        lexer.whitespace_split = True
        toks = list(lexer)
        if not toks:
            raise TemplateError(f"empty command in {expr!r}")
        if toks[0] in FUNCTIONS:
            args = [_term(t, scope) for t in toks[1:]] + ([value] if i else [])
            value = FUNCTIONS[toks[0]](*args)
        elif i == 0 and len(toks) == 1:
            value = _term(toks[0], scope)
        else:
            raise TemplateError(f"unsupported command {command!r}")
    return value


def render(template: str, scope: dict) -> str:
    """Render one template with ``scope`` = {"Values": ..., "Release": ..., "Chart": ...}."""
    # Tokens: ("text", s) and ("action", expr), trimming applied.
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    tokens.append(("text", template[pos:]))
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # per open if: (the parent's output on, a branch was taken)
    on = True
    for kind, s in tokens:
        if kind == "text":
            if on:
                out.append(s)
            continue
        word = s.split(None, 1)[0] if s else ""
        if word == "if":
            cond = on and _truthy(_pipeline(s[2:].strip(), scope))
            stack.append((on, cond))
            on = cond
        elif word == "else":
            if not stack:
                raise TemplateError("else without if")
            parent, taken = stack[-1]
            on = parent and not taken
            stack[-1] = (parent, True)
        elif word == "end":
            if not stack:
                raise TemplateError("end without if")
            on = stack.pop()[0]
        elif word in ("range", "with", "define", "template", "include", "block"):
            raise TemplateError(f"{word} is outside helmlite's subset")
        elif on:
            out.append(_text(_pipeline(s, scope)))
    if stack:
        raise TemplateError("if without end")
    return "".join(out)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_chart(chart_dir: str | pathlib.Path, values: dict | None = None, release: str = "mesh",
                 namespace: str = "default") -> list[dict]:
    """Every Kubernetes object the chart renders to (templates/*.yaml), values merged over
    values.yaml as ``--set``/``-f`` would."""
    chart_dir = pathlib.Path(chart_dir)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    scope = {
        "Values": _merge(yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}, values or {}),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
    }
    docs = []
    for path in sorted((chart_dir / "templates").glob("*.yaml")):
        text = render(path.read_text(), scope)
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs
