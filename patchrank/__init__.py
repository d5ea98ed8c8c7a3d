"""PatchRank: prune CLIP ViT patch tokens by learned ranking (Wu et al., arXiv 2409.14607)."""
from .eval_split import bundled_eval
from .dropin import PrunedCLIP, prune
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable
from .golden import Ranking, golden_ranking
from .hardware import bf16_unit
from .loading import load_model
from .models import PatchModel, flops
from .predictor import Predictor, load_predictor
from .publish import model_card, write_model_card
from .tokens import LearnableTokens, load_tokens

__all__ = ["PatchModel", "load_model", "flops", "bundled_eval", "PatchRankError",
           "WeightsUnavailable", "ModelMismatch", "golden_ranking", "Ranking", "Predictor",
           "load_predictor", "LearnableTokens", "load_tokens", "prune", "PrunedCLIP", "model_card",
           "write_model_card", "bf16_unit"]
__version__ = "0.1.0"

