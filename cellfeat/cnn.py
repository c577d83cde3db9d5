"""Optional CNN image expert: a small network trained from scratch on nucleus-centred crops.

Needs the ``cnn`` extra (torch). No pretrained weights exist here: the network learns
from the patients' labels alone, as a multiple-instance problem: each training step draws
``bag_size`` cells of ``batch_bags`` patients, embeds every cell, pools the cells of a
patient with attention (Ilse, Tomczak & Welling, ICML 2018), and predicts the patient's
label, plus an auxiliary regression of the log lymphocyte count, which a challenge report
found to help with so few patients. Augmentation: flips, 90° rotations and per-channel
colour jitter for stain drift.

Two scikit-learn faces, both taking the cohort frame of :mod:`cellfeat.models` with a
``CROPS`` column (crops aligned with the ``CELLS`` rows):

* :class:`CNNExpert`, a classifier: P(tumoral) from the attention-pooled cells;
* :class:`CNNEmbedding`, a transformer that adds per-cell ``CNN_Embedding_<k>`` columns to
  each patient's cell table, a feature block :class:`~cellfeat.bags.BagAggregator` takes.

The device is CUDA when available (``device="auto"``), else the CPU; on the CPU a fit is
deterministic given ``random_state``, whatever torch's global random state, which a fit
neither reads nor changes. Fitted weights are kept as NumPy arrays, so the
estimators go into skops model bundles like any other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from .extract import QC_COLUMN

__all__ = ["CNNExpert", "CNNEmbedding", "torch_available", "EMBEDDING_PREFIX"]

EMBEDDING_PREFIX = "CNN_Embedding_"


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("the CNN expert needs torch: pip install 'cellfeat[cnn]' "
                          "(with the project's constraints file)") from None
    return torch


def _build_net(width: int, embed_dim: int, seed: int = 0):
    """The network, its initial weights drawn from ``seed`` alone.

    Modules draw their initial weights from torch's global generator: it is forked and
    restored around the construction, so building a network neither depends on nor changes
    the caller's random state.
    """
    torch = _torch()
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: weights start on CPU
        torch.default_generator.manual_seed(int(seed))
        return _make_net(torch, width, embed_dim)


def _make_net(torch, width: int, embed_dim: int):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()

            def block(i, o):
                return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(o), nn.ReLU(inplace=True))

            self.features = nn.Sequential(block(3, width), nn.MaxPool2d(2),
                                          block(width, 2 * width), nn.MaxPool2d(2),
                                          block(2 * width, 4 * width),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(4 * width, embed_dim), nn.ReLU())
            self.attention = nn.Sequential(nn.Linear(embed_dim, 16), nn.Tanh(),
                                           nn.Linear(16, 1))
            self.classifier = nn.Linear(embed_dim, 1)
            self.aux = nn.Linear(embed_dim, 1)

        def embed(self, x):
            return self.features(x)

        def forward(self, x):  # x: (bags, cells, 3, s, s)
            b, k = x.shape[:2]
            e = self.embed(x.flatten(0, 1)).view(b, k, -1)
            a = torch.softmax(self.attention(e), dim=1)
            pooled = (a * e).sum(dim=1)
            return self.classifier(pooled).squeeze(1), self.aux(pooled).squeeze(1)

    return Net()


def _to_tensor(torch, crops: np.ndarray, device):
    x = torch.from_numpy(np.ascontiguousarray(crops)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)


def _augment(torch, x, gen):
    """Flips, 90° rotations and colour jitter, per cell. x: (n, 3, s, s)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(3), x)
    k = torch.randint(0, 4, (n,), generator=gen)
    out = x.clone()
    for r in range(1, 4):
        sel = (k == r).to(x.device)
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    gain = 1 + 0.1 * (2 * torch.rand(n, 3, 1, 1, generator=gen) - 1)
    shift = 0.05 * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    return (out + 0.5) * gain.to(x.device) - 0.5 + shift.to(x.device)


def _usable_bags(X: pd.DataFrame):
    if "CROPS" not in X:
        raise ValueError("the cohort frame has no CROPS column: compute features with the "
                         "pipelines' features stage (it writes crops/) or pass crops= to "
                         "cohort_frame")
    bags, keep = [], []
    for pid, cells, crops in zip(X.index, X["CELLS"], X["CROPS"]):
        ok = (cells[QC_COLUMN] == "ok").to_numpy() if len(cells) else np.zeros(0, bool)
        if len(crops) != len(ok):  # crops from another run or another patient: a bug upstream
            raise ValueError(f"patient {pid}: {len(crops)} crops for {len(ok)} cell rows; "
                             "CROPS must hold one crop per CELLS row, in the same order")
        bags.append(crops[ok])
        keep.append(ok)
    return bags, keep


class CNNExpert(ClassifierMixin, BaseEstimator):
    """Attention-MIL CNN image expert (see the module docstring).

    Parameters
    ----------
    epochs : int, default=20
    bag_size : int, default=16
        Cells drawn per patient per step (with replacement for small bags).
    batch_bags : int, default=8
        Patients per step.
    lr : float, default=3e-3
        AdamW learning rate (weight decay 1e-4), cosine-annealed.
    width, embed_dim : int, default=16, 8
        Channels of the first convolution; size of the cell embedding.
    aux_weight : float, default=0.3
        Weight of the auxiliary log-lymphocyte-count regression (patients without a count
        do not contribute to it).
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int, default=0

    Attributes
    ----------
    classes_, weights_ (dict of parameter name to ndarray), history_ (loss per epoch),
    device_ (where it was trained)
    """

    def __init__(self, *, epochs=20, bag_size=16, batch_bags=8, lr=3e-3, width=16, embed_dim=8,
                 aux_weight=0.3, device="auto", random_state=0):
        self.epochs = epochs
        self.bag_size = bag_size
        self.batch_bags = batch_bags
        self.lr = lr
        self.width = width
        self.embed_dim = embed_dim
        self.aux_weight = aux_weight
        self.device = device
        self.random_state = random_state

    def _device(self):
        torch = _torch()
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def fit(self, X, y):
        torch = _torch()
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        yb = (y == self.classes_[-1]).astype(np.float32)
        bags, _ = _usable_bags(X)
        has = np.array([len(b) > 0 for b in bags])
        if has.sum() < 2:
            raise ValueError("the CNN expert needs at least two patients with usable cells")
        count = np.log(pd.to_numeric(X["LYMPH_COUNT"], errors="coerce").to_numpy(float))
        ok_count = np.isfinite(count)
        self.count_mean_ = float(count[ok_count].mean()) if ok_count.any() else 0.0
        self.count_std_ = float(count[ok_count].std()) if ok_count.sum() > 1 else 1.0
        target_count = np.where(ok_count, (count - self.count_mean_) / max(self.count_std_, 1e-6), 0)

        device = self._device()
        self.device_ = str(device)
        # local generators only (the caller's torch random state is left alone): weights
        # from random_state, augmentation from gen, cell draws from rng; the network has no
        # dropout, so nothing else draws random numbers
        gen = torch.Generator().manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        net = _build_net(self.width, self.embed_dim, self.random_state).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=1e-4)
        idx = np.flatnonzero(has)
        steps = max(1, int(np.ceil(len(idx) / self.batch_bags)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs * steps)
        pos = yb[idx].sum()
        pos_weight = torch.tensor((len(idx) - pos) / max(pos, 1), device=device)
        bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.history_ = []
        net.train()
        for _ in range(self.epochs):
            order = rng.permutation(idx)
            total = 0.0
            for s in range(steps):
                chosen = order[s * self.batch_bags:(s + 1) * self.batch_bags]
                crops = np.stack([bags[i][rng.integers(0, len(bags[i]), self.bag_size)]
                                  for i in chosen])
                x = _to_tensor(torch, crops.reshape(-1, *crops.shape[2:]), device)
                x = _augment(torch, x, gen).view(len(chosen), self.bag_size, *x.shape[1:])
                logit, aux = net(x)
                loss = bce(logit, torch.from_numpy(yb[chosen]).to(device))
                m = torch.from_numpy(ok_count[chosen]).to(device)
                if self.aux_weight and m.any():
                    t = torch.from_numpy(target_count[chosen].astype(np.float32)).to(device)
                    loss = loss + self.aux_weight * ((aux - t)[m] ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            self.history_.append(total / steps)
        self.weights_ = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        self._net = None
        return self

    def _network(self):
        torch = _torch()
        net = getattr(self, "_net", None)
        if net is None:
            net = _build_net(self.width, self.embed_dim)  # weights overwritten just below
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.weights_.items()})
            net.eval()
            self._net = net.to(self._device())
        return self._net

    def __getstate__(self):  # the torch module is rebuilt from weights_ on demand
        state = self.__dict__.copy()
        state.pop("_net", None)
        return state

    def _bag_outputs(self, bags):
        torch = _torch()
        net = self._network()
        device = next(net.parameters()).device
        logits, embeds = [], []
        with torch.no_grad():
            for b in bags:
                if len(b) == 0:
                    logits.append(0.0)  # no usable cell: the neutral call of a balanced fit
                    embeds.append(np.zeros((0, self.embed_dim), np.float32))
                    continue
                x = _to_tensor(torch, b, device)
                logit, _ = net(x[None])
                logits.append(float(logit[0]))
                embeds.append(net.embed(x).cpu().numpy())
        return np.array(logits), embeds

    def predict_proba(self, X):
        check_is_fitted(self, "weights_")
        logits, _ = self._bag_outputs(_usable_bags(X)[0])
        p = 1 / (1 + np.exp(-logits))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]

    def cell_embeddings(self, X) -> list[np.ndarray]:
        """Per patient, an (n_cells, embed_dim) array aligned with the CELLS rows (NaN for
        cells that failed QC)."""
        check_is_fitted(self, "weights_")
        bags, keep = _usable_bags(X)
        _, embeds = self._bag_outputs(bags)
        out = []
        for ok, e in zip(keep, embeds):
            full = np.full((len(ok), self.embed_dim), np.nan, np.float32)
            full[ok] = e
            out.append(full)
        return out


class CNNEmbedding(TransformerMixin, BaseEstimator):
    """Add per-cell ``CNN_Embedding_<k>`` columns to every patient's CELLS table.

    ``fit_transform`` is cross-fitted (``cv`` folds): a training patient's embeddings come
    from a network that did not see its label, so a downstream model does not learn from
    overfit embeddings; ``transform`` uses the network fitted on all patients.

    Parameters
    ----------
    expert : CNNExpert, optional
        The network and its training settings (default ``CNNExpert()``).
    cv : int, default=2
    """

    def __init__(self, expert=None, *, cv=2):
        self.expert = expert
        self.cv = cv

    def _expert(self):
        from sklearn.base import clone

        return clone(self.expert) if self.expert is not None else CNNExpert()

    def _attach(self, X, embeds):
        X = X.copy()
        cols = None
        tables = []
        for cells, e in zip(X["CELLS"], embeds):
            cols = cols or [f"{EMBEDDING_PREFIX}{k:02d}" for k in range(e.shape[1])]
            tables.append(pd.concat([cells.reset_index(drop=True),
                                     pd.DataFrame(e, columns=cols)], axis=1))
        X["CELLS"] = tables
        return X

    def fit(self, X, y):
        self.expert_ = self._expert().fit(X, y)
        return self

    def transform(self, X):
        check_is_fitted(self, "expert_")
        return self._attach(X, self.expert_.cell_embeddings(X))

    def fit_transform(self, X, y):
        y = np.asarray(y)
        self.fit(X, y)
        embeds = [None] * len(X)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=0)
        for tr, te in folds.split(np.zeros(len(y)), y):
            m = self._expert().fit(X.iloc[tr], y[tr])
            for i, e in zip(te, m.cell_embeddings(X.iloc[te])):
                embeds[i] = e
        return self._attach(X, embeds)
