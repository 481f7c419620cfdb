"""MODULE:NAME specs with literal arguments: `models.py:Net(num_classes=10)`, read with
ast.literal_eval, never evaluated, for ``arch``, MODEL factories and ``data`` callables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from relu_doctor.errors import UsageError
from relu_doctor.load import specs
from relu_doctor.load.data import batch_factory
from relu_doctor.load.model import load_model

SOURCE = """
import torch
from torch import nn

CALLS = []


class Net(nn.Module):
    def __init__(self, width=8, num_classes=2, *, act="relu", extra=None):
        super().__init__()
        CALLS.append((width, num_classes, act, extra))
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def batches(n=3, size=2):
    return [torch.ones(size, 4) for _ in range(n)]
"""


@pytest.fixture
def nets(tmp_path: Path) -> str:
    path = tmp_path / "nets.py"
    path.write_text(SOURCE)
    return str(path)


@pytest.mark.parametrize(
    ("call", "args", "kwargs"),
    [
        ("Net", (), {}),
        ("Net()", (), {}),
        ("Net(num_classes=10)", (), {"num_classes": 10}),
        ("Net(16, 10)", (16, 10), {}),
        ("Net(16, num_classes=-3, act='gelu')", (16,), {"num_classes": -3, "act": "gelu"}),
        (
            "Net(extra={'a:b': [1, 2.5, None, True], 'c': (1,), 'd': {1, 2}, 'e': b'x'})",
            (),
            {"extra": {"a:b": [1, 2.5, None, True], "c": (1,), "d": {1, 2}, "e": b"x"}},
        ),
        ("Net( width = 4 , )", (), {"width": 4}),
    ],
)
def test_parse_literal_arguments(call: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    parsed = specs.parse(f"pkg.mod:{call}")
    assert (parsed.left, parsed.name) == ("pkg.mod", "Net")
    assert (parsed.args, parsed.kwargs) == (args, kwargs)


@pytest.mark.parametrize(
    ("text", "left"),
    [
        ("path/to/models.py:Net(3)", "path/to/models.py"),
        (r"C:\work\models.py:Net(3)", r"C:\work\models.py"),
        ("dir:v2/models.py:Net(name='x:y')", "dir:v2/models.py"),
    ],
)
def test_parse_paths(text: str, left: str) -> None:
    assert specs.parse(text).left == left


@pytest.mark.parametrize(
    "text", ["model.pt", "C:\\models\\net.pt", "runs/best(2).pt", "a b:c", "pkg.mod:", ":Net"]
)
def test_plain_paths_are_not_specs(text: str) -> None:
    assert not specs.looks_like_spec(text)


def test_model_factory_with_arguments(nets: str) -> None:
    loaded = load_model(f"{nets}:Net(16, num_classes=10)")
    assert loaded.module(torch.ones(1, 4)).shape == (1, 10)
    assert loaded.name == f"{nets}:Net(16, num_classes=10)"


def test_arch_with_arguments(tmp_path: Path, nets: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_test", nets)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net(width=16, num_classes=10)
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(str(path), arch=f"{nets}:Net(width=16, num_classes=10)")
    assert torch.equal(loaded.module.state_dict()["body.2.weight"], model.body[2].weight)


def test_data_callable_with_arguments(nets: str) -> None:
    batches = list(batch_factory(f"{nets}:batches(n=2, size=5)", batch_size=8)())
    assert [b.rows for b in batches] == [5, 5]


@pytest.mark.parametrize(
    ("call", "detail"),
    [
        ("Net(num_classes=10", "'(' was never closed"),
        ("Net(num_classes=)", "invalid syntax"),
        ("Net(10)(2)", ""),
        ("Net(*[1])", "(*args)"),
        ("Net(**{'a': 1})", "(**kwargs)"),
        ("Net(num_classes=n)", "n is an expression"),
        ("Net(num_classes=2 ** 4)", "2 ** 4 is an expression"),
    ],
)
def test_bad_arguments_show_the_accepted_form(nets: str, call: str, detail: str) -> None:
    with pytest.raises(UsageError) as err:
        load_model(f"{nets}:{call}")
    msg = str(err.value)
    assert "cannot read the arguments" in msg
    assert detail in msg
    assert msg.endswith(
        "write literal values, like MODULE:NAME(10, num_classes=10, widths=(64, 128), name='x')"
    )


def test_bad_arguments_name_the_parameter(tmp_path: Path, nets: str) -> None:
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(UsageError) as err:
        load_model(str(path), arch=f"{nets}:Net(width=)")
    assert err.value.param == "arch"
    assert str(err.value).startswith(f"arch {nets}:Net(width=): cannot read the arguments")
    with pytest.raises(UsageError) as err:
        batch_factory(f"{nets}:batches(n=x)", batch_size=4)()
    assert err.value.param == "data"


def test_wrong_argument_is_a_call_error(nets: str) -> None:
    with pytest.raises(UsageError, match=r"calling it failed: TypeError: .*'num_clases'"):
        load_model(f"{nets}:Net(num_clases=10)")


HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w')",
    "[open('{marker}', 'w') for _ in (1,)]",
    "(lambda: open('{marker}', 'w'))()",
    "exec(\"open('{marker}', 'w')\")",
    "{{'a': open('{marker}', 'w')}}",
    "().__class__.__base__.__subclasses__()",
    'f\'{{open("{marker}", "w")}}\'',
]


@pytest.mark.parametrize("payload", HOSTILE)
@pytest.mark.parametrize("where", ["model", "arch", "data"])
def test_arguments_never_run_code(tmp_path: Path, nets: str, payload: str, where: str) -> None:
    marker = tmp_path / "PWNED"
    spec = f"{nets}:Net(num_classes={payload.format(marker=marker)})"
    with pytest.raises(UsageError, match="cannot read the arguments"):
        if where == "model":
            load_model(spec)
        elif where == "arch":
            path = tmp_path / "sd.pt"
            torch.save({"w": torch.zeros(1)}, path)
            load_model(str(path), arch=spec)
        else:
            batch_factory(spec.replace(":Net(num_classes=", ":batches(n="), batch_size=4)()
    assert not marker.exists()
    assert specs.resolve(f"{nets}:CALLS") == []  # not even the factory was called


def test_arguments_are_not_evaluated_even_positionally(tmp_path: Path, nets: str) -> None:
    marker = tmp_path / "PWNED"
    with pytest.raises(UsageError):
        load_model(f"{nets}:Net(__import__('pathlib').Path('{marker}').touch())")
    assert not marker.exists()
