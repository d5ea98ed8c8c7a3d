"""Predictors known for a model: JSON lists of where trained predictors live.

A predictor only works with the model (and weights) it was trained for, so a list says for
which model each one is. A list is JSON, either a bare list of entries or an object whose
``"predictors"`` key holds the list (other keys, e.g. a ``"_example"``, are ignored)::

    {"predictors": [
      {"model": "ViT-B-16", "tag": "openai", "source": "hf-hub:org/patchrank-vit-b-16-openai",
       "description": "trained on 10k ImageNet images, Kendall tau 0.62"}]}

- ``model``: the open_clip name as ``pr.load_model`` takes it (``ViT-B-16``, ``hf-hub:org/repo``,
  or ``bundled``); ``tag``: the pretrained tag (``openai``; any spelling open_clip accepts) or
  null for none;
- ``source``: what ``pr.load_predictor`` takes: ``hf-hub:org/repo[/file]``, a path (relative
  paths are relative to the list's own folder), or ``bundled`` for the predictor shipped in
  the package;
- ``description``: one line shown to the user.

Lists come from files the caller names (the app ships ``assets/predictors.json``) and from the
``PATCHRANK_PREDICTORS`` environment variable: a path to such a file, or the JSON itself when
it starts with ``[`` or ``{``. Nothing is downloaded to list predictors; a listed file is only
fetched (and checked against the model) when it is loaded. A malformed list or entry is skipped
and reported in ``problems``, never fatal: a list is a convenience, not a dependency.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .predictor import load_predictor
from .weights import canonical_tag

ENV = "PATCHRANK_PREDICTORS"
BUNDLED = "bundled"


@dataclass(frozen=True)
class KnownPredictor:
    """One entry of a list, with ``source`` resolved (relative paths made absolute)."""
    model: str
    tag: str | None
    source: str
    description: str
    origin: str             # the list it came from (a path, or PATCHRANK_PREDICTORS)

    def matches(self, m) -> bool:
        """True when this entry is for ``m`` (same name, same tag as open_clip normalises it)."""
        if _norm_name(self.model) != _norm_name(m.name):
            return False
        return _norm_tag(self.model, self.tag) == _norm_tag(m.name, m.pretrained)


def _norm_name(name: str) -> str:
    name = (name or "").strip()
    return name if name.startswith(("hf-hub:", "local-dir:")) else name.replace("/", "-")


def _norm_tag(name: str, tag: str | None) -> str | None:
    if not tag:
        return None
    try:
        return canonical_tag(_norm_name(name), tag) or tag
    except Exception:   # not an open_clip name (bundled, hf-hub:) or not a tag: compare as given
        return tag


def _entry(raw: Any, base: Path | None, origin: str) -> KnownPredictor:
    if not isinstance(raw, dict):
        raise ValueError("an entry must be an object with model, tag, source, description")
    model, source = raw.get("model"), raw.get("source")
    tag, desc = raw.get("tag"), raw.get("description", "")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("an entry has no model name")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"the entry for {model} has no source")
    if tag is not None and not isinstance(tag, str):
        raise ValueError(f"the entry for {model}: tag must be a string or null")
    source = source.strip()
    if source != BUNDLED and not source.startswith("hf-hub:") and base is not None \
            and not Path(source).is_absolute():
        source = str(base / source)
    return KnownPredictor(model.strip(), tag or None, source, str(desc).strip(), origin)


def parse(text: str, base: Path | None, origin: str) -> tuple[list[KnownPredictor], list[str]]:
    """Entries and problems (one line each) of one list's JSON text."""
    try:
        data = json.loads(text)
    except ValueError as e:
        return [], [f"{origin}: not JSON ({e})"]
    if isinstance(data, dict):
        data = data.get("predictors", [])
    if not isinstance(data, list):
        return [], [f"{origin}: expected a list of predictors (or an object with \"predictors\")"]
    out, problems = [], []
    for i, raw in enumerate(data):
        try:
            out.append(_entry(raw, base, origin))
        except ValueError as e:
            problems.append(f"{origin}, entry {i + 1}: {e}")
    return out, problems


def read(files: Iterable[str | os.PathLike] = (), env: str | None = None
         ) -> tuple[list[KnownPredictor], list[str]]:
    """Every entry of ``files`` then of ``env`` (default: ``$PATCHRANK_PREDICTORS``), in order,
    duplicates (same model, tag, source) dropped; and the problems met."""
    env = os.environ.get(ENV, "") if env is None else env
    entries, problems = [], []
    for f in files:
        p = Path(f)
        try:
            text = p.read_text()
        except OSError as e:
            problems.append(f"{p}: cannot be read ({e.strerror or e})")
            continue
        got, bad = parse(text, p.parent, str(p))
        entries += got
        problems += bad
    env = env.strip()
    if env:
        if env.startswith(("[", "{")):
            got, bad = parse(env, None, ENV)
        else:
            try:
                got, bad = parse(Path(env).read_text(), Path(env).parent, f"{ENV}={env}")
            except OSError as e:
                got, bad = [], [f"{ENV}={env}: cannot be read ({e.strerror or e})"]
        entries += got
        problems += bad
    seen, unique = set(), []
    for e in entries:
        key = (_norm_name(e.model), e.tag, e.source)
        if key not in seen:
            seen.add(key)
            unique.append(e)
    return unique, problems


def known_for(m, files: Iterable[str | os.PathLike] = (), env: str | None = None
              ) -> tuple[list[KnownPredictor], list[str]]:
    """The listed predictors made for model ``m`` (never one for another model), and problems."""
    entries, problems = read(files, env)
    return [e for e in entries if e.matches(m)], problems


def load(entry: KnownPredictor, m):
    """The entry's predictor, checked against ``m`` (``ModelMismatch`` if it was trained for
    other weights, ``WeightsUnavailable`` if it cannot be fetched, ``PatchRankError`` if the
    file is not a predictor)."""
    return load_predictor(None if entry.source == BUNDLED else entry.source, model=m)


def digest(p) -> str:
    """A short hash of a predictor's weights and header: two predictors with the same digest
    rank the same way (the app keys cached analyses on it)."""
    import hashlib
    h = hashlib.sha256(json.dumps(p.header(), sort_keys=True, default=str).encode())
    for k, v in sorted(p.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
