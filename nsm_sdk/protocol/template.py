"""The subset of Go text/template that NetworkService selectors use (protocol doc §10.2).

Selector values such as `nodeName: "{{.nodeName}}"` are rendered with the client labels as data.
Supported actions: `{{.key}}`, with optional spaces (`{{ .key }}`) and Go's trim markers
(`{{- .key -}}`, which also eat the whitespace next to them); `key` is a Go identifier. A key missing
from the labels renders as `<no value>`, as Go does for a map.

Anything else inside `{{ }}` (pipelines, functions, `{{.}}`, comments, nested fields, bad syntax) makes
the whole value literal. For bad syntax that is exactly Go's behaviour (matchutils falls back to the
literal string on a template error); for valid-but-unsupported Go syntax it is a documented
simplification: such selectors then only match literally.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

NO_VALUE = "<no value>"

_ACTION = re.compile(r"\{\{(?P<ltrim>- )?\s*\.(?P<key>[^\W\d]\w*)\s*?(?P<rtrim> -)?\}\}")
_OPEN = "{{"


def render(text: str, data: Mapping[str, str]) -> str:
    """Render `text` with `data`, or return it unchanged when it uses anything beyond `{{.key}}`."""
    if _OPEN not in text:
        return text
    pieces: list[str] = []
    position = 0
    while True:
        start = text.find(_OPEN, position)
        if start < 0:
            pieces.append(text[position:])
            break
        found = _ACTION.match(text, start)
        if found is None:
            return text
        before = text[position:start]
        if found["ltrim"]:
            before = before.rstrip()
        pieces.append(before)
        pieces.append(data.get(found["key"], NO_VALUE))
        position = found.end()
        if found["rtrim"]:
            while position < len(text) and text[position].isspace():
                position += 1
    return "".join(pieces)
