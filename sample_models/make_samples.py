"""Regenerate the sample models of relu-doctor (`make samples`).

Seeded and deterministic; writes next to this file:

- textbook_fresh.pt  784-128-10 ReLU MLP, freshly initialised (healthy)
- textbook_dying.pt  the same network after real SGD training with a too-high learning rate
- cnn_dead.pt        small Conv/BatchNorm/ReLU CNN with planted dead channels
- textbook_data.pt   {"x": (512, 784) float32, "y": (512,) int64} from the training task

Dead fractions are measured here with plain torch (no relu_doctor code) on the inputs the
demo scans with: 8 batches of torch.randn(32, *shape) from torch.Generator().manual_seed(0).
A unit is dead when its ReLU output is <= 0 for every one of those 256 samples.
"""

import copy
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).parent
SEED = 0  # model init, shuffling, BN calibration, choice of planted channels
DATA_SEED = 1  # synthetic task (teacher and inputs); differs from the scan seed 0
SCAN_SEED, SCAN_BATCHES, SCAN_BATCH = 0, 8, 32

# Training of the dying network: plain SGD whose learning rate is far too high.
N_TRAIN, N_DATA = 4096, 512
LR, EPOCHS, BATCH = 3.2, 6, 128
WEIGHT_DECAY = 1e-2  # on weights only, biases undecayed (the usual recipe)
CLIP = 5.0  # gradient-norm clip: keeps the loss finite instead of NaN

SAFE = [
    nn.Sequential,
    nn.Linear,
    nn.ReLU,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
]


def textbook() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(784, 128), relu=nn.ReLU(), fc2=nn.Linear(128, 10))
    )


def cnn() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            bn1=nn.BatchNorm2d(16),
            relu1=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            bn2=nn.BatchNorm2d(32),
            relu2=nn.ReLU(inplace=True),
            gap=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(32, 10),
        )
    )


def synthetic_task(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10-class random linear teacher on standard-normal 784-dim inputs."""
    g = torch.Generator().manual_seed(DATA_SEED)
    teacher = torch.randn(784, 10, generator=g)
    x = torch.randn(n, 784, generator=g)
    return x, (x @ teacher).argmax(dim=1)


def train_too_hot(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": WEIGHT_DECAY}, {"params": biases}], lr=LR
    )
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def plant_dead_channels(model: nn.Sequential) -> dict[str, list[int]]:
    """Calibrate BN running stats on N(0,1) inputs, then set bias -1e4 on chosen channels."""
    model.train()
    for bn in (model.bn1, model.bn2):
        bn.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(64, 3, 32, 32))
    planted = {}
    for name, k in (("bn1", 4), ("bn2", 8)):
        bn = getattr(model, name)
        bn.momentum = 0.1
        chosen = torch.randperm(bn.num_features)[:k].sort().values
        with torch.no_grad():
            bn.bias[chosen] = -1e4
        planted[name] = chosen.tolist()
    return planted


def fired_units(model: nn.Sequential, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per ReLU module: which units fired (> 0) on at least one of the scan samples."""
    g = torch.Generator().manual_seed(SCAN_SEED)
    fired: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for _ in range(SCAN_BATCHES):
            h = torch.randn(SCAN_BATCH, *shape, generator=g)
            for name, module in model.named_children():
                h = module(h)
                if isinstance(module, nn.ReLU):
                    f = (h > 0).flatten(2).any(dim=2) if h.dim() > 2 else h > 0
                    fired[name] = fired.get(name, torch.zeros(h.shape[1], dtype=torch.bool))
                    fired[name] |= f.any(dim=0)
    return fired


def finish(model: nn.Sequential) -> nn.Sequential:
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def save_and_check(obj: object, name: str, out: Path) -> int:
    path = out / name
    torch.save(obj, path)
    with torch.serialization.safe_globals(SAFE):
        back = torch.load(path, weights_only=True)
    if isinstance(obj, nn.Module):
        same = (
            type(back) is type(obj)
            and repr(back) == repr(obj)
            and back.training == obj.training
            and obj.state_dict().keys() == back.state_dict().keys()
            and all(torch.equal(v, back.state_dict()[k]) for k, v in obj.state_dict().items())
        )
    else:
        same = all(torch.equal(v, back[k]) for k, v in obj.items())  # type: ignore[attr-defined]
    if not same:
        sys.exit(f"error: {name} does not reload identically with weights_only=True")
    return path.stat().st_size


def report(name: str, fired: dict[str, torch.Tensor], size: int, extra: str = "") -> int:
    dead = sum(int((~f).sum()) for f in fired.values())
    units = sum(f.numel() for f in fired.values())
    n = SCAN_BATCHES * SCAN_BATCH
    print(
        f"{name}: {dead}/{units} units dead ({dead / units:.1%}) over {n} N(0,1) samples "
        f"(scan seed {SCAN_SEED}, seed {SEED}, data seed {DATA_SEED}), {size / 1024:.0f} KiB{extra}"
    )
    return dead


def main(out: Path = HERE) -> int:
    """Write the sample files into ``out``; exit status 1 when a check fails."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ok = True
    x, y = synthetic_task(N_TRAIN + N_DATA)

    torch.manual_seed(SEED)
    net = textbook()
    fresh = finish(copy.deepcopy(net))  # also the starting point of the dying run
    size = save_and_check(fresh, "textbook_fresh.pt", out)
    ok &= report("textbook_fresh.pt", fired_units(fresh, (784,)), size) == 0

    acc = train_too_hot(net, x[:N_TRAIN], y[:N_TRAIN])
    dying = finish(net)
    size = save_and_check(dying, "textbook_dying.pt", out)
    extra = f", train acc {acc:.2f} (lr {LR}, {EPOCHS} epochs, batch {BATCH})"
    ok &= report("textbook_dying.pt", fired_units(dying, (784,)), size, extra) >= 0.3 * 128

    torch.manual_seed(SEED)
    model = cnn()
    planted = plant_dead_channels(model)
    model = finish(model)
    size = save_and_check(model, "cnn_dead.pt", out)
    fired = fired_units(model, (3, 32, 32))
    report("cnn_dead.pt", fired, size, f", planted dead channels {planted}")
    for (bn, chans), relu in zip(planted.items(), ("relu1", "relu2"), strict=True):
        found = (~fired[relu]).nonzero().flatten().tolist()
        if found != chans:
            print(f"error: {relu} dead channels {found} != planted {bn} {chans}")
            ok = False

    data = {"x": x[N_TRAIN:].clone(), "y": y[N_TRAIN:].clone()}  # clone: own storage
    size = save_and_check(data, "textbook_data.pt", out)
    counts = torch.bincount(data["y"], minlength=10).tolist()
    print(f"textbook_data.pt: x (512, 784) float32, y int64 counts {counts}, {size / 1024:.0f} KiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
