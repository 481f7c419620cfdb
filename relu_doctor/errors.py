"""Domain errors. The library raises these; only the CLI turns them into exit codes.

Messages speak the caller's language: a parameter named in a message is written
``param("eps")``, which the library shows as ``eps`` and the command line as its flag
(``--eps``, see ``cli/options.py``), so no library module holds command-line words.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PARAM = re.compile(r"⟨([a-z_]+)(?:=([^⟩]*))?⟩")


def param(name: str, value: object = None) -> str:
    """Mark a parameter inside an error message (rendered by ``ReluDoctorError``), with a
    value when the message suggests one: ``param("grad", False)`` is ``grad=False`` in the
    library and ``--no-grad`` on the command line."""
    return f"⟨{name}⟩" if value is None else f"⟨{name}={value}⟩"


def _library(m: re.Match[str]) -> str:
    return m.group(1) if m.group(2) is None else f"{m.group(1)}={m.group(2)}"


def a_kind(word: str) -> str:
    """``word`` with its indefinite article, for type names in messages: "an int", "a dict",
    "an ndarray"."""
    vowel = word[:1].lower() in "aeiou" or word.startswith(("nd", "NaN"))
    return f"{'an' if vowel else 'a'} {word}"


def one_line(exc: BaseException | None, limit: int = 300) -> str:
    """One line of an exception's message, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ReluDoctorError(Exception):
    """Base class: a problem the user can fix. The message says what is wrong and what to do.

    ``param`` names the argument at fault, when there is one (``eps``, ``data``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.template = message
        self.param = param
        super().__init__(_PARAM.sub(_library, message))

    def render(self, spell: Callable[[str, str | None], str]) -> str:
        """The message with each marked parameter (and value) spelled by ``spell``, e.g. as
        a command-line flag."""
        return _PARAM.sub(lambda m: spell(m.group(1), m.group(2)), self.template)


class LoadError(ReluDoctorError):
    """A model file or spec could not be loaded (missing, corrupt, refused, wrong format)."""


class UnsafePickleError(LoadError):
    """A pickle needs globals outside the safe allowlist and trust was not given."""

    def __init__(self, path: str, globals_needed: list[str]) -> None:
        self.path = path
        self.globals_needed = globals_needed
        shown = ", ".join(globals_needed[:8]) + (" …" if len(globals_needed) > 8 else "")
        super().__init__(
            f"refusing to unpickle {path}: it needs code outside torch.nn ({shown}). "
            f"Either save a state dict and pass {param('arch')} MODULE:CALLABLE, "
            f"or pass {param('trust')} (or set RELU_DOCTOR_TRUST=1) if you trust this file.",
            param="trust",
        )


class InputError(ReluDoctorError):
    """Input data or an input shape is missing, malformed or does not fit the model."""


class CaptureError(ReluDoctorError):
    """The scan found nothing to measure, or the forward pass failed."""


class UsageError(ReluDoctorError):
    """Arguments that do not make sense together or are out of range."""


class RepairError(ReluDoctorError):
    """A repair that could not be made: no chosen site could be swapped or re-initialised."""
