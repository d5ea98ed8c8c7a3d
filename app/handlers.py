"""The app's plain functions in one namespace, for scripts and tests that drive the app without a
server (``benchmarks/app_latency.py``, the Hub tests): images, numbers and strings in; PIL
images, dicts and markdown out. Every function takes ``session``, an id for the per-session
state in ``app.sessions``.

Nothing in the app imports this module: each function lives in the module of its concern
(``analysis``, ``panels``, ``pruning``, ``models``, ``predictors``, ``examples``), and this one
only names them together.
"""
from .analysis import (ANALYSES, RANKER_VALUES, Analysis, analyze, default_golden_mode,
                       ensure_golden, golden_pending, ranker_choices, reanalyze)
from .examples import EXAMPLES_DIR, example_files
from .models import label_preset, load_model
from .panels import analyze_views, golden_title, golden_views, patch_ranks, status_md, threshold, views
from .paths import app_tmp
from .predictors import upload_predictor
from .pruning import prune
from .sessions import session as get_session

__all__ = ["ANALYSES", "RANKER_VALUES", "Analysis", "analyze", "default_golden_mode",
           "ensure_golden", "golden_pending", "ranker_choices", "reanalyze", "EXAMPLES_DIR",
           "example_files", "label_preset", "load_model", "analyze_views", "golden_title",
           "golden_views", "patch_ranks", "status_md", "threshold", "views", "app_tmp",
           "upload_predictor", "prune", "get_session"]
