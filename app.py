"""PatchRank demo entry point: ``python app.py`` locally and on Hugging Face Spaces.

The ``app/`` package (imported below) holds the UI; ``patchrank/`` is the engine. The bundled
model needs no network; the Hub is left as huggingface_hub configures it (``HF_HUB_OFFLINE``,
``HF_ENDPOINT`` are the user's), so real CLIP weights can load wherever the Hub is reachable.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PATCHRANK_THREADS", min(2, os.cpu_count() or 1))))

import app  # noqa: E402  (the app/ package: a package wins over this same-named file)

demo = app.build_demo()

if __name__ == "__main__":
    demo.launch(**app.launch_kwargs())
