"""PatchRank: prune CLIP ViT patch tokens by learned ranking (Wu et al., arXiv 2409.14607)."""
from .bundled import bundled_eval
from .dropin import PrunedCLIP, prune
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable
from .golden import Ranking, golden_ranking
from .models import PatchModel, flops, load_model
from .predictor import Predictor, load_predictor
from .tokens import LearnableTokens, load_tokens

__all__ = ["PatchModel", "load_model", "flops", "bundled_eval", "PatchRankError",
           "WeightsUnavailable", "ModelMismatch", "golden_ranking", "Ranking", "Predictor",
           "load_predictor", "LearnableTokens", "load_tokens", "prune", "PrunedCLIP", "model_card",
           "write_model_card"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``pr.model_card`` / ``pr.write_model_card`` on first use: importing ``patchrank.publish``
    here would make ``python -m patchrank.publish`` run a module already imported."""
    if name in ("model_card", "write_model_card"):
        from . import publish
        return getattr(publish, name)
    raise AttributeError(f"module 'patchrank' has no attribute {name!r}")
