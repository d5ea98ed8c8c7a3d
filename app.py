"""PatchRank demo entry point: ``python app.py`` locally and on Hugging Face Spaces.

The ``app/`` package (imported below) holds the UI; ``patchrank/`` is the engine. Offline
switches are set before gradio or huggingface_hub are imported. On Spaces (``SPACE_ID`` set) the
Hub stays reachable so real CLIP weights can load.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if not os.environ.get("SPACE_ID"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PATCHRANK_THREADS", min(2, os.cpu_count() or 1))))

import app  # noqa: E402  (the app/ package: a package wins over this same-named file)

demo = app.build_demo()

if __name__ == "__main__":
    demo.launch(**app.launch_kwargs())
