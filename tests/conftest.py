"""Shared fixtures. Offline switches are set before torch/open_clip/gradio are imported."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

#: The stand-in Hub's session fixtures (files, hub, b32) for every test module.
pytest_plugins = ["tests.hub_fixtures"]


@pytest.fixture(scope="session")
def bundled():
    """The bundled default model (offline, small: 14x14 grid, 4 blocks, prune layer 1)."""
    import patchrank as pr
    return pr.load_model()


@pytest.fixture(scope="session")
def eval_split():
    import patchrank as pr
    return pr.bundled_eval()


@pytest.fixture(scope="session")
def eval_batch(bundled, eval_split):
    """16 preprocessed evaluation scenes and their labels."""
    x = torch.stack([bundled.preprocess(im) for im in eval_split.images[:16]])
    return x, torch.as_tensor(eval_split.labels[:16])


def tiny_vit(prune_layer=None, layers=4, width=64, grid=4, patch=8, seed=0, pool_type="tok",
             context_length=16):
    """A random-init open_clip CLIP with a tiny ViT tower (fast brute-force references);
    ``context_length=77`` gives real CLIP's text context (long class names fit)."""
    import open_clip
    from patchrank.models import PatchModel
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": grid * patch, "patch_size": patch, "width": width,
                    "layers": layers, "head_width": 32, "pool_type": pool_type},
        text_cfg={"context_length": context_length, "vocab_size": 49408, "width": 32, "heads": 2,
                  "layers": 1})
    pre = open_clip.image_transform(grid * patch, is_train=False)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return PatchModel(clip, pre, tok, name="tiny-test", pretrained=None, prune_layer=prune_layer)


@pytest.fixture
def tiny():
    return tiny_vit(prune_layer=1)
