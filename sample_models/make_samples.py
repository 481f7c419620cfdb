"""Regenerate the sample models of relu-doctor (`make samples`).

Seeded and deterministic; writes next to this file:

- textbook_fresh.pt  784-128-10 ReLU MLP, freshly initialised (healthy)
- textbook_dying.pt  the same network after real SGD training through a learning-rate spike
- run/epoch1.pt ...  that training run saved after every epoch (epoch6.pt = textbook_dying.pt)
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

# Training of the dying network: plain SGD at lr 0.1 whose schedule spikes to 3.2 for two
# epochs. The spike epochs are chaotic (a float32 rounding difference between two CPUs
# would change which units die), so the run is computed in float64, where a 1e-11 change
# of the starting weights changes nothing (checked below), and saved in float32.
N_TRAIN, N_DATA = 4096, 512
LR, SPIKE_LR, BATCH = 0.1, 3.2, 128
SCHEDULE = (LR, LR, SPIKE_LR, SPIKE_LR, LR, LR)  # learning rate of each epoch
WEIGHT_DECAY = 1e-2  # on weights only, biases undecayed (the usual recipe)
CLIP = 5.0  # gradient-norm clip: keeps the loss finite instead of NaN
PERTURBATION = (
    1e-11  # relative change of the start in the robustness check (float64 rounding: ~1e-16)
)

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


def train_with_spike(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, perturb: float = 0.0
) -> list[nn.Sequential]:
    """Train a float64 copy of ``model`` through ``SCHEDULE``; return the float32 model after
    each epoch (``perturb``: scale every starting weight by 1 + perturb first)."""
    net = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1 + perturb)
    x = x.double()
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": WEIGHT_DECAY}, {"params": biases}], lr=LR
    )
    net.train()
    torch.manual_seed(SEED)  # the same shuffles for every run
    epochs = []
    for lr in SCHEDULE:
        for group in opt.param_groups:
            group["lr"] = lr
        perm = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), CLIP)
            opt.step()
        epoch = textbook()
        epoch.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
        epochs.append(finish(epoch))
    return epochs


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
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


def check_robust(
    start: nn.Sequential, x: torch.Tensor, y: torch.Tensor, epochs: list[nn.Sequential]
) -> bool:
    """The same units die, epoch by epoch, when the starting weights change by
    ``PERTURBATION`` (far more than the rounding of another CPU), and the dead units sit
    clearly below zero on the scan inputs."""
    again = train_with_spike(start, x, y, perturb=PERTURBATION)
    for k, (a, b) in enumerate(zip(epochs, again, strict=True), 1):
        dead_a = ~fired_units(a, (784,))["relu"]
        dead_b = ~fired_units(b, (784,))["relu"]
        if not torch.equal(dead_a, dead_b):
            print(f"error: epoch {k}: a {PERTURBATION} change of the start changes the dead units")
            return False
    g = torch.Generator().manual_seed(SCAN_SEED)
    inputs = torch.cat([torch.randn(SCAN_BATCH, 784, generator=g) for _ in range(SCAN_BATCHES)])
    with torch.no_grad():  # largest pre-activation of each unit on the scan inputs
        closest = min(float(e.fc1(inputs).amax(dim=0).abs().min()) for e in epochs)
    print(
        f"robust: the same dead units in every epoch after a {PERTURBATION} change of the "
        f"start; no unit's peak pre-activation is closer to zero than {closest:.4f}"
    )
    return closest > 1e-3  # float32 rounding of a scan's forward is ~1e-6


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

    epochs = train_with_spike(net, x[:N_TRAIN], y[:N_TRAIN])
    run = out / "run"
    run.mkdir(exist_ok=True)
    for k, epoch in enumerate(epochs, 1):
        size = save_and_check(epoch, f"run/epoch{k}.pt", out)
        acc = accuracy(epoch, x[:N_TRAIN], y[:N_TRAIN])
        report(
            f"run/epoch{k}.pt",
            fired_units(epoch, (784,)),
            size,
            f", lr {SCHEDULE[k - 1]}, train acc {acc:.2f}",
        )
    dying = epochs[-1]
    size = save_and_check(dying, "textbook_dying.pt", out)
    acc = accuracy(dying, x[:N_TRAIN], y[:N_TRAIN])
    extra = f", train acc {acc:.2f} (lr {SCHEDULE}, batch {BATCH})"
    ok &= report("textbook_dying.pt", fired_units(dying, (784,)), size, extra) >= 0.3 * 128
    ok &= check_robust(net, x[:N_TRAIN], y[:N_TRAIN], epochs)

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
