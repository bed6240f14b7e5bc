"""HTTP route templates (ASP.NET style, what Functions routes are) compiled into regexes over the request path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

_PARAM = re.compile(r"\{([^{}]+)\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "bool": r"(?:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"\{?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}\}?",
}


@dataclass(frozen=True)
class CompiledRoute:
    """A route template as a regex; :meth:`match` gives a path's route parameters, or None."""

    template: str  # the full path template, "/api/items/{id}"
    regex: re.Pattern[str]
    groups: Mapping[str, str]  # regex group -> route parameter name
    defaults: Mapping[str, str]
    literal_length: int

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        params = dict(self.defaults)
        for group, name in self.groups.items():
            value = m.group(group)
            if value is not None:
                params[name] = unquote(value)
        return params


def compile_route(prefix: str, route: str) -> CompiledRoute:
    """An ASP.NET-style route template (what Functions routes are) as a regex over the request path."""
    full = "/".join(part.strip("/") for part in (prefix, route) if part and part.strip("/"))
    pattern = ""
    groups: dict[str, str] = {}
    defaults: dict[str, str] = {}
    literal_length = 0
    for segment in full.split("/") if full else []:
        segment_re, optional, pos = "", False, 0
        for m in _PARAM.finditer(segment):
            literal = segment[pos : m.start()]
            literal_length += len(literal)
            segment_re += re.escape(literal)
            spec = m.group(1).strip()
            catch_all = spec.startswith("*")
            spec = spec.lstrip("*")
            is_optional = spec.endswith("?")
            spec = spec.rstrip("?")
            default = None
            if "=" in spec:
                spec, default = spec.split("=", 1)
            name, *constraints = spec.split(":")
            expr = "[^/]+"
            for constraint in constraints:
                if constraint.lower() in _CONSTRAINTS:
                    expr = _CONSTRAINTS[constraint.lower()]
                    break
            if catch_all:
                expr = ".*"
            group = f"p{len(groups)}"
            groups[group] = name.strip()
            if default is not None:
                defaults[name.strip()] = default
            segment_re += f"(?P<{group}>{expr})"
            if (catch_all or is_optional or default is not None) and m.group(0) == segment:
                optional = True
            pos = m.end()
        literal_length += len(segment) - pos
        segment_re += re.escape(segment[pos:])
        pattern += f"(?:/{segment_re})?" if optional else f"/{segment_re}"
    return CompiledRoute(
        template="/" + full,
        regex=re.compile(f"^{pattern}/?$", re.IGNORECASE),
        groups=groups,
        defaults=defaults,
        literal_length=literal_length,
    )
