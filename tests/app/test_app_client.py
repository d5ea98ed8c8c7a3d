"""The app served on 127.0.0.1 and driven through its named API with gradio_client."""
import json
from pathlib import Path

from tests.app import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

pytestmark = pytest.mark.slow

LABELS = "top, sandal, bag, sneaker"
ENDPOINTS = {"/analyze", "/set_ratio", "/threshold", "/prune", "/curve", "/export", "/views",
             "/load_model", "/upload_predictor", "/tradeoff", "/label_preset", "/prune_layer",
             "/golden_target", "/opacity", "/patch_rank"}


def _repo_files() -> set:
    return {p.name for p in S.REPO.iterdir()} | {f"app/{p.name}" for p in (S.REPO / "app").iterdir()}


BEFORE: set = set()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    BEFORE.update(_repo_files())
    with S.running_app(golden_mode="fast") as url:
        yield Client(url, verbose=False, analytics_enabled=False,
                     download_files=str(tmp_path_factory.mktemp("downloads")))


def test_named_endpoints(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert ENDPOINTS <= set(api["named_endpoints"])
    params = [p["parameter_name"] for p in api["named_endpoints"]["/analyze"]["parameters"]]
    assert params == ["image", "golden_mode", "ratio", "left", "right"]


def test_upload_slider_release_export(client):
    heat_l, heat_r, mask_l, mask_r, agree, status = client.predict(
        handle_file(str(S.EXAMPLE)), "fast", 0.5, "golden", "attention", api_name="/analyze")
    for f in (heat_l, heat_r, mask_l, mask_r):
        assert Image.open(f).width >= 14 * 16
    assert "98 of 196" in agree and "bundled" in status

    lo = client.predict(0.2, "golden", "attention", api_name="/threshold")
    hi = client.predict(0.9, "golden", "attention", api_name="/threshold")
    assert "39 of 196" in lo[2] and "176 of 196" in hi[2]
    def brightness(f):
        return np.asarray(Image.open(f).convert("L"), dtype=float).mean()
    assert brightness(lo[0]) < brightness(hi[0])          # fewer patches kept: more dimmed

    full, left, right, cost = client.predict(0.3, "golden", "attention", LABELS, api_name="/prune")
    assert {c["label"] for c in full["confidences"]} <= set(LABELS.split(", "))
    assert len(left["confidences"]) == 4 and "GFLOPs" in cost and "Latency" in cost

    fig, md = client.predict(LABELS, api_name="/curve")
    assert fig["type"] == "plotly" and "golden" in json.loads(fig["plot"])["data"][0]["name"]

    files = client.predict(0.3, "golden", "attention", LABELS, api_name="/export")
    names = {Path(f).name for f in files}
    assert {f"cat-chelsea_keep0.30_{n}" for n in ("rankings.json", "rankings.csv", "curve.json",
                                                  "curve.csv")} <= names
    assert Path(files[0]).name == "cat-chelsea_keep0.30.zip"
    data = json.loads(Path(next(f for f in files if f.endswith("rankings.json"))).read_text())
    assert data["keep_count"] == 59 and len(data["orders"]["attention"]) == 196


def test_bad_inputs_keep_server_serving(client, tmp_path):
    odd = S.odd_images(tmp_path / "odd")
    for name in ("not_image", "bomb", "tiny_1x1", "truncated"):
        with pytest.raises(Exception) as e:
            client.predict(handle_file(str(odd[name])), "fast", 0.5, "golden", "norm", api_name="/analyze")
        assert "image" in str(e.value).lower(), (name, str(e.value))
    with pytest.raises(Exception, match="maximum"):
        client.predict(3.0, "golden", "norm", api_name="/threshold")
    with pytest.raises(Exception, match="choices"):
        client.predict(0.5, "oracle", "norm", api_name="/threshold")
    with pytest.raises(Exception, match="at most"):
        client.predict(0.5, "golden", "norm", ",".join(f"c{i}" for i in range(500)), api_name="/prune")
    # odd but valid files are converted and analysed
    out = client.predict(handle_file(str(odd["cmyk"])), "fast", 0.5, "golden", "norm", api_name="/analyze")
    assert "CMYK" in out[5]
    # and the server still answers
    assert "of 196" in client.predict(0.4, "golden", "norm", api_name="/threshold")[2]


def test_bad_upload_gets_the_apps_own_message(client, tmp_path):
    """Each refused file: the app's one-line message, as the browser shows it; no server path,
    no framework wording ("Could not preprocess input component ...")."""
    from app import inputs
    odd = S.odd_images(tmp_path / "odd")
    for name in S.REFUSED:
        with pytest.raises(Exception) as e:
            client.predict(handle_file(str(odd[name])), "fast", 0.5, "golden", "norm", api_name="/analyze")
        msg = str(e.value)
        with pytest.raises(inputs.InputError) as own:
            inputs.load_image(str(odd[name]))
        assert msg == str(own.value), (name, msg)
        assert "\n" not in msg and "/" not in msg and "preprocess" not in msg.lower(), (name, msg)


def test_set_ratio_returns_one_consistent_state(client):
    client.predict(handle_file(str(S.EXAMPLE)), "fast", 0.5, "golden", "attention", api_name="/analyze")
    mask_l, mask_r, agree, full, left, right, cost = client.predict(
        0.2, "golden", "attention", LABELS, False, api_name="/set_ratio")
    assert "39 of 196" in agree and "At keep ratio 0.20" in cost and "Kept tokens** 39" in cost
    assert len(left["confidences"]) == 4 and Image.open(mask_l).width >= 14 * 16


def test_new_controls_through_the_api(client):
    """Opacity, a patch's ranks, the prune layer and a class-conditioned golden ranking: each a
    named endpoint doing what its control does on the page."""
    client.predict(handle_file(str(S.EXAMPLE)), "fast", 0.5, "golden", "attention", api_name="/analyze")
    def pixels(f):
        return np.asarray(Image.open(f).convert("RGB"), dtype=float)[:448]
    plain = client.predict(0.0, 0.5, "golden", "attention", api_name="/opacity")
    solid = client.predict(1.0, 0.5, "golden", "attention", api_name="/opacity")
    assert np.abs(pixels(plain[0]) - pixels(solid[0])).mean() > 20   # the image vs colours only
    md = client.predict(3, 4, 0.5, api_name="/patch_rank")
    assert "row 4, column 5" in md and "CLS attention" in md and "of 196" in md
    with pytest.raises(Exception, match="outside"):
        client.predict(30, 4, 0.5, api_name="/patch_rank")
    *_, agree, status = client.predict(2, 0.5, "golden", "attention", api_name="/prune_layer")
    assert "from block 2 on" in agree and "pruned at block 2" in status
    with pytest.raises(Exception, match="choices: \\[1, 2, 3\\]"):
        client.predict(9, 0.5, "golden", "attention", api_name="/prune_layer")
    heat_l, *_, status = client.predict("class:sandal", LABELS, 0.5, "golden", "attention",
                                        api_name="/golden_target")
    assert "golden ranking for 'sandal'" in status and Image.open(heat_l).width >= 14 * 16
    with pytest.raises(Exception, match="golden target"):
        client.predict("oracle", LABELS, 0.5, "golden", "attention", api_name="/golden_target")
    client.predict("similarity", LABELS, 0.5, "golden", "attention", api_name="/golden_target")
    *_, status = client.predict(1, 0.5, "golden", "attention", api_name="/prune_layer")
    assert "Settings" not in status


def test_model_switch_failure_is_a_message(client):
    msg, labels, value, _golden_mode = client.predict("ViT-B-32/openai", "", "", api_name="/load_model")
    assert "Could not load" in msg and value == "bundled"


def test_tradeoff_endpoint(client):
    g, lat, md = client.predict(api_name="/tradeoff")
    assert g["type"] == "plotly" and "1200 images" in md
    g_all, _, _ = client.predict(False, api_name="/tradeoff")
    assert json.loads(g["plot"])["layout"]["yaxis"].get("range") and \
        not json.loads(g_all["plot"])["layout"]["yaxis"].get("range")


def test_nothing_written_into_the_repository(client):
    """Serving, uploads and exports (the tests above) wrote nothing into the repository: no
    .gradio/ or flagged/ folder, no .pyi stubs (gradio writes those for component subclasses)."""
    new = {f for f in _repo_files() - BEFORE if not f.endswith("__pycache__")}
    assert not new, new
