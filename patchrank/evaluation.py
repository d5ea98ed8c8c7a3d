"""The bundled model card's numbers: zero-shot top-1 and whether the model looks at the object."""
from __future__ import annotations

import torch

from .eval_split import EvalSplit, bundled_eval
from .loading import load_model
from .progress import bar as progress_bar


@torch.inference_mode()
def evaluate_bundled(m=None, ds: EvalSplit | None = None, seed: int = 0, batch: int = 100,
                     limit: int | None = None, progress: bool = False) -> dict:
    """The model card's numbers: zero-shot top-1, and whether the model looks at the object.

    Pruning at the model's prune layer, per image: (a) remove the target's patches (coverage > 0)
    vs remove as many random patches; (b) keep only the target's patches.
    Images whose target covers every patch (none here) would be skipped in (a). ``limit``: the
    first N scenes only (a quick check that an install works; the card's numbers use all)."""
    m = m or load_model()
    ds = ds or bundled_eval(limit)
    clf = m.zero_shot(list(ds.classnames))
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(ds.labels)
    full, no_target, no_random, only_target = [], [], [], []
    bar = progress_bar(len(ds), "eval-bundled", unit="img", enabled=progress)
    for i0 in range(0, len(ds), batch):
        bar.update(min(batch, len(ds) - i0))
        x = torch.stack([m.preprocess(im) for im in ds.images[i0:i0 + batch]])
        full.append(clf.predict(m.encode_image(x)))
        for j in range(len(x)):
            cov = torch.as_tensor(ds.masks[i0 + j])
            target = torch.nonzero(cov > 0).flatten()
            rest = torch.nonzero(cov == 0).flatten()
            xi = x[j:j + 1]
            only_target.append(clf.predict(m.encode_image(xi, keep=target[None])))
            no_target.append(clf.predict(m.encode_image(xi, keep=rest[None])))
            drop = torch.randperm(m.num_patches, generator=g)[:len(target)]
            keep = torch.ones(m.num_patches, dtype=torch.bool)
            keep[drop] = False
            no_random.append(clf.predict(m.encode_image(xi, keep=torch.nonzero(keep).flatten()[None])))

    def acc(preds):
        return round(float((torch.cat(preds) == labels).float().mean()) * 100, 2)

    full_pred = torch.cat(full)
    per_class = {c: round(float((full_pred[labels == i] == i).float().mean()) * 100, 1)
                 for i, c in enumerate(ds.classnames)}
    out = {"images": len(ds), "prune_layer": m.prune_layer, "top1": acc(full),
           "remove_target": acc(no_target), "remove_random": acc(no_random),
           "keep_only_target": acc(only_target), "per_class_top1": per_class,
           "mean_target_patches": round(float((torch.as_tensor(ds.masks) > 0).sum(1).float().mean()), 1)}
    out["extra_drop_target_vs_random"] = round(out["remove_random"] - out["remove_target"], 2)
    return out
