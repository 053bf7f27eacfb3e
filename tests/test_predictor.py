"""detrex_lite.predictor.Predictor on a tiny Deformable DETR: checkpoint loading, the test-time
resize, BGR -> RGB, and results at the original image size."""
import cv2
import numpy as np
import pytest
import torch

from detrex_lite.predictor import Predictor
from tools_tiny_models import save_config, save_tiny_checkpoint, tiny_deformable_detr_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config yaml, checkpoint path, the state dict saved in it)."""
    root = tmp_path_factory.mktemp("predictor")
    cfg = tiny_deformable_detr_config("one_stage")
    # Spread the class scores so that the top-k order is not a near-tie everywhere.
    model = save_tiny_checkpoint(cfg, root, class_bias_std=2.0)
    return save_config(cfg, str(root / "tiny.yaml")), str(root / "model_final.pth"), model.state_dict()


class _Spy(torch.nn.Module):
    """Records the inputs the predictor gives the model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, batched_inputs):
        self.calls.append(batched_inputs)
        return self.model(batched_inputs)


def _bgr_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_loads_checkpoint_weights(tiny):
    cfg_path, ckpt, state = tiny
    predictor = Predictor(cfg_path, ckpt, device="cpu")
    loaded = predictor.model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
    assert not predictor.model.training


def test_init_checkpoint_from_config(tiny):
    cfg_path, ckpt, state = tiny
    predictor = Predictor(cfg_path, device="cpu", opts=[f"train.init_checkpoint={ckpt}"])
    name = "class_embed.0.bias"
    torch.testing.assert_close(predictor.model.state_dict()[name], state[name], rtol=0, atol=0)


def test_resize_channel_order_and_original_size(tiny):
    cfg_path, ckpt, _ = tiny
    predictor = Predictor(cfg_path, ckpt, device="cpu")
    spy = _Spy(predictor.model)
    predictor.model = spy
    # BGR with distinct constant channels: the model must see R first.
    image = np.zeros((50, 120, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    instances = predictor(image)

    (inp,) = spy.calls[0]
    # ResizeShortestEdge(64, max_size=96): 50x120 -> scale 64/50 gives a 153.6 long side > 96,
    # so scale = 96/120 = 0.8 -> 40x96 (detectron2 rounds h, w = int(x + 0.5)).
    assert tuple(inp["image"].shape) == (3, 40, 96)
    assert inp["image"].dtype == torch.uint8
    assert inp["image"][:, 20, 48].tolist() == [30, 20, 10]
    assert (inp["height"], inp["width"]) == (50, 120)
    assert instances.image_size == (50, 120)
    boxes = instances.pred_boxes.tensor
    assert len(instances) == 10
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 120).all() and (boxes[:, 3] <= 50).all()
    assert (instances.scores[:-1] >= instances.scores[1:]).all()


def test_matches_model_on_manually_resized_input(tiny):
    cfg_path, ckpt, _ = tiny
    predictor = Predictor(cfg_path, ckpt, device="cpu")
    image = _bgr_image(72, 60, seed=1)
    got = predictor(image)
    # Independent preprocessing: 72x60 -> short side 64 (scale 64/60) -> 77x64 (long 76.8 <= 96).
    resized = cv2.resize(image[:, :, ::-1], (64, 77), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        ref = predictor.model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": 72, "width": 60}])
    ref = ref[0]["instances"]
    # detectron2 resizes with PIL bilinear, cv2 differs by at most a grey level or so: allow a
    # small difference in the outputs but require the same ranking of the top detections.
    torch.testing.assert_close(got.scores, ref.scores, atol=2e-2, rtol=0)
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1.0, rtol=0)


def test_path_equals_array_and_batch_equals_single(tiny, tmp_path):
    cfg_path, ckpt, _ = tiny
    predictor = Predictor(cfg_path, ckpt, device="cpu")
    a, b = _bgr_image(70, 90, seed=2), _bgr_image(80, 64, seed=3)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, a)
    from_path = predictor(path)
    from_array = predictor(a)
    torch.testing.assert_close(from_path.scores, from_array.scores, rtol=0, atol=0)
    torch.testing.assert_close(from_path.pred_boxes.tensor, from_array.pred_boxes.tensor, rtol=0, atol=0)
    # The model runs batch-invariant inference: a batch gives each image's single result.
    batch = predictor.predict([a, b])
    single_b = predictor(b)
    torch.testing.assert_close(batch[0].scores, from_array.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1].pred_boxes.tensor, single_b.pred_boxes.tensor, atol=1e-3, rtol=0)


def test_rgb_input_format(tiny):
    cfg_path, ckpt, _ = tiny
    bgr = Predictor(cfg_path, ckpt, device="cpu")
    rgb = Predictor(cfg_path, ckpt, device="cpu", input_format="RGB")
    image = _bgr_image(64, 64, seed=4)
    torch.testing.assert_close(bgr(image).scores, rgb(image[:, :, ::-1].copy()).scores, rtol=0, atol=0)


def test_bad_inputs_are_named(tiny, tmp_path):
    cfg_path, ckpt, _ = tiny
    predictor = Predictor(cfg_path, ckpt, device="cpu")
    with pytest.raises(ValueError, match="HxWx3"):
        predictor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        predictor(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="input_format"):
        Predictor(cfg_path, ckpt, device="cpu", input_format="BRG")


def test_config_override_typo_is_refused(tiny):
    from detrex_lite.config import ConfigError

    cfg_path, ckpt, _ = tiny
    with pytest.raises(ConfigError, match="init_checkpoint"):
        Predictor(cfg_path, ckpt, device="cpu", opts=["train.init_checkpont=x.pth"])


def test_reads_images_with_the_training_reader(tiny, tmp_path):
    """A 16-bit grey PNG came out 99.6 % at 255 through detectron2's reader (training reads it
    scaled, mean 127.5); float and int32 TIFFs were read as black/white instead of refused."""
    from PIL import Image

    from detrex_lite.data import ImageReadError

    cfg_path, ckpt, _ = tiny
    predictor = Predictor(cfg_path, ckpt, device="cpu")
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    image = predictor.read(str(tmp_path / "grey16.png"))
    assert image.dtype == np.uint8 and image.shape == (16, 64, 3)
    assert abs(float(image.mean()) - 127.5) < 1.0 and (image == 255).mean() < 0.05
    for dtype, name in ((np.float32, "float.tif"), (np.int32, "int32.tif")):
        Image.fromarray(np.full((8, 8), 3, dtype=dtype)).save(tmp_path / name)
        with pytest.raises(ImageReadError, match=f"Cannot read image {tmp_path / name}: ValueError: image mode"):
            predictor.read(str(tmp_path / name))
