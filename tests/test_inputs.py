"""Every way data gets in (batches, shapes, synthetic inputs, data files), and every way it
can be wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from relu_doctor.cli.options import InputShape
from relu_doctor.errors import InputError, UsageError
from relu_doctor.load.data import batch_factory
from relu_doctor.scanner.batches import Batch, Batches, as_batches, check_batch_args, tensor_batches
from relu_doctor.scanner.shapes import infer_input_shape, infer_int_high, synthetic_batches


def load_data(spec: str, batch_size: int) -> Batches:
    """Read a data file (or call a factory) as the command line does."""
    return batch_factory(spec, batch_size=batch_size)()


def parse_input_shape(text: str) -> tuple[int, ...]:
    return InputShape().convert(text, None, None)


CPU = torch.device("cpu")


# --- Batch ----------------------------------------------------------------------------


def test_batch_to_moves_nested_tensors_without_copying_on_same_device() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    b = Batch((x, [x, {"m": x}]), {"k": (x,)}, y, 4)
    moved = b.to(CPU)
    assert moved.args[0] is x
    assert moved.args[1][1]["m"] is x
    assert moved.kwargs["k"][0] is x
    assert moved.targets is y
    assert moved.rows == 4


# --- shapes and batch arguments --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3,32,32", (3, 32, 32)), ("3x32x32", (3, 32, 32)), ("784", (784,)), (" (3, 8) ", (3, 8))],
)
def test_parse_input_shape(text: str, expected: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["", "3,,32", "0,3", "-1", "3.5", "a,b", "²", "3;32"])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(click.BadParameter, match="expected comma-separated positive integers"):
        parse_input_shape(text)


def test_check_batch_args() -> None:
    check_batch_args(1, None)
    check_batch_args(32, 8)
    with pytest.raises(UsageError, match=r"^batch_size must be a positive integer, got -3$") as e:
        check_batch_args(-3, 8)
    assert e.value.param == "batch_size"
    with pytest.raises(UsageError, match=r"^batches must be a positive integer, got 0$"):
        check_batch_args(32, 0)


# --- infer_input_shape -----------------------------------------------------------------


class ConvFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


F32, I64 = torch.float32, torch.int64


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (nn.Linear(5, 3), ((5,), F32)),
        (nn.Conv1d(2, 3, 3), ((2, 64), F32)),
        (nn.Conv2d(3, 4, 3), ((3, 32, 32), F32)),
        (nn.Conv3d(1, 2, 3), ((1, 16, 16, 16), F32)),
        (nn.Embedding(10, 3), ((16,), I64)),
        (nn.EmbeddingBag(10, 3), ((16,), I64)),
        (nn.Sequential(nn.Sequential(nn.Linear(7, 3), nn.ReLU()), nn.Linear(3, 1)), ((7,), F32)),
        (ConvFirst(), ((3, 32, 32), F32)),
        (nn.LSTM(4, 5, batch_first=True), ((16, 4), F32)),
        (nn.GRU(4, 5), None),  # (T, N, F): dim 0 is not the sample dim
        (nn.Sequential(nn.ReLU()), None),
        (nn.LazyLinear(3), None),
    ],
)
def test_infer_input_shape(model: nn.Module, expected: object) -> None:
    assert infer_input_shape(model) == expected


def test_inferred_shape_runs_the_model() -> None:
    model = ConvFirst()
    found = infer_input_shape(model)
    assert found is not None
    batch = next(synthetic_batches(found[0], batch_size=2, batches=1, seed=0, device=CPU))
    assert model(*batch.args).shape == (2, 2)


def test_infer_input_shape_torchscript_scripted_traced_and_reloaded(tmp_path: Path) -> None:
    scripted = torch.jit.script(ConvFirst())
    assert infer_input_shape(scripted) == ((3, 32, 32), F32)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(6, 2), nn.ReLU())), str(path))
    assert infer_input_shape(torch.jit.load(str(path))) == ((6,), F32)
    traced = torch.jit.trace(nn.Sequential(nn.Conv1d(5, 2, 3)), torch.randn(1, 5, 10))
    assert infer_input_shape(traced) == ((5, 64), F32)
    emb = torch.jit.script(nn.Sequential(nn.Embedding(50, 4)))
    assert infer_input_shape(emb) == ((16,), I64)
    assert infer_int_high(emb) == 50


def test_infer_input_shape_exported_program() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    ep = torch.export.export(model, (torch.randn(2, 3, 9, 9),))
    assert infer_input_shape(ep.module()) == ((3, 9, 9), F32)
    emb = nn.Sequential(nn.Embedding(40, 4), nn.ReLU())
    ep2 = torch.export.export(emb, (torch.zeros(2, 7, dtype=torch.long),))
    assert infer_input_shape(ep2.module()) == ((7,), I64)
    assert infer_int_high(ep2.module()) == 40


def test_infer_int_high() -> None:
    assert infer_int_high(nn.Sequential(nn.Embedding(123, 4), nn.Linear(4, 2))) == 123
    assert infer_int_high(nn.Linear(4, 2)) is None


# --- synthetic and tensor batches ------------------------------------------------------


def _synth(seed: int = 0, **kw: object) -> list[Batch]:
    params: dict = {"batch_size": 4, "batches": 3, "seed": seed, "device": CPU} | kw
    return list(synthetic_batches((3, 5), **params))


def test_synthetic_batches_shape_dtype_rows() -> None:
    batches = _synth()
    assert len(batches) == 3
    for b in batches:
        assert b.args[0].shape == (4, 3, 5)
        assert b.args[0].dtype == torch.float32
        assert b.rows == 4
        assert b.targets is None
        assert b.kwargs == {}
    assert not torch.equal(batches[0].args[0], batches[1].args[0])


def test_synthetic_batches_reproducible_and_independent_of_global_rng() -> None:
    torch.manual_seed(1)
    first = _synth(seed=7)
    torch.manual_seed(999)
    torch.randn(10)
    state = torch.random.get_rng_state()
    second = _synth(seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.args[0], b.args[0])
    assert not torch.equal(_synth(seed=8)[0].args[0], first[0].args[0])


def test_synthetic_batches_integer_ids() -> None:
    batches = _synth(dtype=torch.int64, int_high=5, batches=20)
    ids = torch.cat([b.args[0] for b in batches])
    assert ids.dtype == torch.int64
    assert int(ids.min()) == 0 and int(ids.max()) == 4
    half = _synth(dtype=torch.float16)
    assert half[0].args[0].dtype == torch.float16


def test_synthetic_batches_bad_args() -> None:
    with pytest.raises(UsageError, match="batch_size"):
        synthetic_batches((3,), batch_size=0, batches=1, seed=0, device=CPU)
    with pytest.raises(UsageError, match="batches"):
        synthetic_batches((3,), batch_size=1, batches=-1, seed=0, device=CPU)


def test_tensor_batches_are_views() -> None:
    x, y = torch.randn(10, 3), torch.arange(10)
    batches = list(tensor_batches(x, y, 4))
    assert [b.rows for b in batches] == [4, 4, 2]
    assert batches[1].args[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert batches[2].targets is not None and batches[2].targets.tolist() == [8, 9]
    with pytest.raises(InputError, match="10 samples but targets have 9"):
        tensor_batches(x, y[:9], 4)


# --- as_batches ------------------------------------------------------------------------


def test_as_batches_tensor_and_pair() -> None:
    x = torch.randn(10, 3)
    assert [b.rows for b in as_batches(x, 4)] == [4, 4, 2]
    pairs = list(as_batches((x, torch.arange(10)), 5))
    assert len(pairs) == 2
    assert pairs[0].targets is not None and pairs[0].targets.tolist() == [0, 1, 2, 3, 4]


def test_as_batches_is_lazy() -> None:
    def gen() -> Iterator[torch.Tensor]:
        yield torch.ones(2, 3)
        raise RuntimeError("second batch requested")

    it = as_batches(gen(), 8)
    first = next(it)
    assert first.rows == 2
    with pytest.raises(RuntimeError, match="second batch requested"):
        next(it)


def test_limit_reads_no_further_than_needed() -> None:
    pulled = []

    def gen() -> Iterator[torch.Tensor]:
        for i in range(10):
            pulled.append(i)
            yield torch.ones(1, 2)

    assert len(list(as_batches(gen(), 1).limit(3))) == 3
    assert pulled == [0, 1, 2]
    assert len(list(as_batches(torch.ones(5, 2), 1).limit(None))) == 5


def test_as_batches_dataloader() -> None:
    x, y = torch.randn(10, 3), torch.arange(10)
    batches = list(as_batches(DataLoader(TensorDataset(x, y), batch_size=4), 99))
    assert [b.rows for b in batches] == [4, 4, 2]
    assert batches[0].targets is not None and batches[0].targets.tolist() == [0, 1, 2, 3]
    only_x = list(as_batches(DataLoader(TensorDataset(x), batch_size=5), 99))
    assert [(len(b.args), b.targets) for b in only_x] == [(1, None), (1, None)]


def test_as_batches_item_forms() -> None:
    x = torch.randn(3, 2)
    ids = torch.zeros(3, 4, dtype=torch.long)
    # A dict is keyword inputs, all of them: a key named like targets stays an input.
    d = next(as_batches([{"input_ids": ids, "mask": ids, "labels": torch.arange(3)}], 1))
    assert set(d.kwargs) == {"input_ids", "mask", "labels"}
    assert d.args == ()
    assert d.targets is None and d.rows == 3
    paired = next(as_batches([({"input_ids": ids}, torch.arange(3))], 1))
    assert set(paired.kwargs) == {"input_ids"} and paired.targets is not None
    no_targets = next(as_batches([{"x": x}], 1))
    assert no_targets.targets is None and no_targets.kwargs["x"] is x
    multi = next(as_batches([(x, x, x)], 1))
    assert len(multi.args) == 3 and multi.targets is None
    tuple_inputs = next(as_batches([((x, ids), torch.arange(3))], 1))
    assert len(tuple_inputs.args) == 2 and tuple_inputs.targets is not None
    as_list = next(as_batches([[x, torch.arange(3)]], 1))
    assert as_list.args == (x,) and as_list.targets is not None
    from_numpy = next(as_batches(np.zeros((2, 3)), 4))
    assert from_numpy.args[0].dtype == torch.float32
    assert list(as_batches([], 4)) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (42, "data is an int; accepted: a tensor of samples"),
        ("x.csv", "data is a str"),
        ({"x": torch.ones(2)}, r"pass \[the_dict\]"),
        (torch.tensor(1.0), "0-d tensor"),
    ],
)
def test_as_batches_rejects_bad_data(data: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        as_batches(data, 4)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ((1, 2), "batch 2 of data holds no tensor"),
        ({"a": "text"}, "holds no tensor"),
        ("text", "batch 2 of data is a str; each batch must be a tensor"),
        ((torch.ones(3, 2), torch.arange(2)), "has 3 samples but 2 targets"),
        ((torch.ones(3, 2), ["a", "b", "c"]), "targets are a list"),
    ],
)
def test_as_batches_rejects_bad_items_when_reached(item: object, message: str) -> None:
    it = as_batches([torch.ones(1, 2), item], 4)
    assert next(it).rows == 1
    with pytest.raises(InputError, match=message):
        next(it)


def test_as_batches_rejects_bad_batch_size() -> None:
    with pytest.raises(UsageError, match="batch_size must be a positive integer, got 0"):
        as_batches(torch.ones(2, 2), 0)


# --- load_data: files ------------------------------------------------------------------


def _one(spec: Path | str, batch_size: int = 100) -> Batch:
    batches = list(load_data(str(spec), batch_size))
    assert len(batches) == 1
    return batches[0]


def test_load_pt_forms(tmp_path: Path) -> None:
    x, y = torch.randn(6, 3), torch.arange(6)
    torch.save(x, tmp_path / "t.pt")
    torch.save((x, y), tmp_path / "pair.pth")
    torch.save({"inputs": x, "labels": y}, tmp_path / "d.PT")
    assert torch.equal(_one(tmp_path / "t.pt").args[0], x)
    pair = _one(tmp_path / "pair.pth")
    assert pair.targets is not None and torch.equal(pair.targets, y)
    d = _one(tmp_path / "d.PT")
    assert torch.equal(d.args[0], x) and d.targets is not None
    assert [b.rows for b in load_data(str(tmp_path / "t.pt"), 4)] == [4, 2]


class _Custom:
    pass


def test_load_pt_never_unpickles_code(tmp_path: Path) -> None:
    torch.save({"x": torch.ones(2), "obj": _Custom()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match=r"cannot read .*evil\.pt as pt data"):
        load_data(str(tmp_path / "evil.pt"), 4)
    torch.save({"weight": torch.ones(2)}, tmp_path / "sd.pt")
    with pytest.raises(InputError, match="keys weight; expected x"):
        load_data(str(tmp_path / "sd.pt"), 4)


def test_load_npy_dtypes(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(5, 4)))
    np.save(tmp_path / "i.npy", np.arange(10, dtype=np.int32).reshape(5, 2))
    f = _one(tmp_path / "f.npy")
    assert f.args[0].dtype == torch.float32 and f.args[0].shape == (5, 4) and f.rows == 5
    # integers keep their type: the scan decides (float or token ids) from the model
    assert _one(tmp_path / "i.npy").args[0].dtype == torch.int32


def test_load_npz(tmp_path: Path) -> None:
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "single.npz", features=x)
    np.savez(tmp_path / "positional.npz", x, y)
    b = _one(tmp_path / "xy.npz")
    assert b.args[0].dtype == torch.float32
    assert b.targets is not None and b.targets.dtype == torch.int64
    assert _one(tmp_path / "single.npz").targets is None
    assert _one(tmp_path / "positional.npz").targets is not None
    np.savez(tmp_path / "bad.npz", a=x, b=y)
    with pytest.raises(InputError, match=r"has arrays a, b; name the inputs x"):
        load_data(str(tmp_path / "bad.npz"), 4)


def test_load_csv_with_targets(tmp_path: Path) -> None:
    (tmp_path / "cls.csv").write_text("a,b,Label\n1,2.5,0\n3,4,1\n5,6,1\n")
    b = _one(tmp_path / "cls.csv")
    assert b.args[0].dtype == torch.float32 and b.args[0].shape == (3, 2)
    assert b.targets is not None and b.targets.dtype == torch.int64
    assert b.targets.tolist() == [0, 1, 1]
    (tmp_path / "reg.csv").write_text("a,y\n1,0.5\n2,\n")  # NaN is allowed
    r = _one(tmp_path / "reg.csv")
    assert r.targets is not None and r.targets.dtype == torch.float32
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    assert _one(tmp_path / "plain.csv").targets is None
    (tmp_path / "names.csv").write_text("a,target\n1,dog\n2,cat\n")
    named = _one(tmp_path / "names.csv")
    assert named.targets is not None and named.targets.tolist() == [1, 0]


def test_load_parquet(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4], "y": [1, 0]}).to_parquet(tmp_path / "d.parquet")
    b = _one(tmp_path / "d.parquet")
    assert b.args[0].shape == (2, 2) and b.args[0].dtype == torch.float32
    assert b.targets is not None and b.targets.tolist() == [1, 0]


def test_load_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")

    def no_engine(*args: object, **kwargs: object) -> None:
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    with pytest.raises(InputError, match=r"pip install relu-doctor\[parquet\]"):
        load_data(str(tmp_path / "d.parquet"), 4)


def test_load_from_callable_spec(tmp_path: Path) -> None:
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def batches():\n"
        "    for _ in range(3):\n"
        "        yield torch.ones(2, 4), torch.zeros(2, dtype=torch.long)\n"
        "def nothing():\n"
        "    return 5\n"
    )
    batches = list(load_data(f"{tmp_path / 'mydata.py'}:batches", 1))
    assert len(batches) == 3 and batches[0].rows == 2 and batches[0].targets is not None
    with pytest.raises(InputError, match="returned is an int"):
        load_data(f"{tmp_path / 'mydata.py'}:nothing", 1)


# --- load_data: bad files --------------------------------------------------------------


def test_load_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "text.csv").write_text("a,city,kind,y\n1,Oslo,x,0\n")
    with pytest.raises(InputError, match=r"non-numeric columns \(city, kind\)"):
        load_data(str(tmp_path / "text.csv"), 4)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty\.csv has no rows"):
        load_data(str(tmp_path / "empty.csv"), 4)
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"header\.csv has no rows"):
        load_data(str(tmp_path / "header.csv"), 4)
    (tmp_path / "onlyy.csv").write_text("y\n1\n")
    with pytest.raises(InputError, match="no feature columns"):
        load_data(str(tmp_path / "onlyy.csv"), 4)


def test_load_missing_directory_unknown(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"data file .*nope\.npy not found"):
        load_data(str(tmp_path / "nope.npy"), 4)
    with pytest.raises(InputError, match="is a directory"):
        load_data(str(tmp_path), 4)
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(InputError, match=r"unknown file type '\.txt'; use \.pt"):
        load_data(str(tmp_path / "d.txt"), 4)


@pytest.mark.parametrize("name", ["bad.npy", "bad.npz", "bad.pt", "bad.parquet"])
def test_load_corrupt_files(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x93NUMPY garbage that is not a real file")
    with pytest.raises(InputError, match=f"cannot read .*{name}"):
        load_data(str(tmp_path / name), 4)


def test_load_refuses_object_arrays_and_empty_data(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read"):
        load_data(str(tmp_path / "obj.npy"), 4)
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(InputError, match=r"empty\.npy has no samples"):
        load_data(str(tmp_path / "empty.npy"), 4)
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    with pytest.raises(InputError, match="dtype <U1; data must be numeric"):
        load_data(str(tmp_path / "str.npy"), 4)


def test_load_checks_batch_size(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="batch_size must be a positive integer, got -3"):
        load_data(str(tmp_path / "x.npy"), -3)


# --- the batch count, as the progress display shows it ------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (torch.rand(10, 3), 3),  # 4 + 4 + 2 rows
        ((torch.rand(10, 3), torch.arange(10) % 4), 3),  # an (x, y) pair is not 2 batches
        (np.random.default_rng(0).random((10, 3)), 3),  # nor is an array 10 batches
        ([torch.rand(2, 3)] * 5, 5),  # a list of batches
        (DataLoader(TensorDataset(torch.rand(10, 3)), batch_size=3), 4),
        ((torch.rand(2, 3) for _ in range(3)), None),  # a generator does not know
    ],
    ids=["tensor", "pair", "numpy", "list", "dataloader", "generator"],
)
def test_progress_counts_the_batches_the_data_makes(data: object, expected: int | None) -> None:
    import relu_doctor

    seen: list[tuple[int, int | None]] = []
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    relu_doctor.scan(model, data, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert {t for _, t in seen} == {expected}
    if expected is not None:
        assert seen[-1] == (expected, expected)


def test_progress_total_stops_at_batches() -> None:
    import relu_doctor

    seen: list[tuple[int, int | None]] = []
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    relu_doctor.scan(
        model, torch.rand(10, 3), batch_size=4, batches=2, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(1, 2), (2, 2)]
