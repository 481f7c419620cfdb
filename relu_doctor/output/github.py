"""GitHub Actions annotations: one workflow command per finding, as ruff and mypy print them.

``::error file=ckpt.pt,title=RD101::act1: 16 of 16 units dead (100.0%), limit 50%``. Values
are escaped by GitHub's workflow-command rules (those of ``@actions/core``): in the message
``%``, CR and LF; in a property also ``:`` and ``,``, which would otherwise end it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from relu_doctor.gate.findings import Finding

#: Finding severity -> workflow command.
COMMANDS = {"error": "error", "warning": "warning", "note": "notice"}


def escape_data(text: str) -> str:
    """Escape a command's message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a command property value (``file=``, ``title=``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(findings: Iterable[Finding], model_paths: Mapping[str, str]) -> str:
    """One ``::error|warning|notice`` line per finding, ``file=`` set to the model's path
    (when ``model_paths`` knows it; otherwise the model name starts the message)."""
    lines = []
    for f in findings:
        path = model_paths.get(f.model)
        props = [f"file={escape_property(path)}"] if path else []
        props.append(f"title={escape_property(f.rule)}")
        message = f.message if path else f"{f.model}: {f.message}"
        lines.append(f"::{COMMANDS[f.severity]} {','.join(props)}::{escape_data(message)}")
    return "".join(line + "\n" for line in lines)
