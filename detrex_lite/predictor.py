"""Single-image inference from a LazyConfig: ``Predictor(cfg, checkpoint)(image) -> Instances``
(every detection the model returns, as evaluation sees them), and ``Predictor.detect(image)``:
those scoring at least the predictor's threshold, with class names (like Hugging Face's
``post_process_object_detection``).

The predictor reproduces what the test data loader does to an image before the model sees it
(the config's test-time augmentation, usually ``ResizeShortestEdge``; BGR -> RGB; HWC -> CHW), so
that its results match evaluation. The model itself rescales its boxes to the size of the image
it was given (detectron2's ``height``/``width`` convention), so ``Instances`` come back at the
original image size.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detrex_lite.data.dataset_mapper import read_image_file
from detectron2.structures import Instances
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detrex_lite.analysis.threshold import ScoreThreshold, choose_threshold
from detrex_lite.checkpoint import load_weights
from detrex_lite.checkpoint.run import find_run_checkpoint, run_config_path
from detrex_lite.config import apply_overrides_checked, load_config_file
from detrex_lite.data.classes import ClassInfo
from detrex_lite.errors import ConfigError

__all__ = ["Predictor", "load_config", "preprocess_image", "test_augmentations", "test_metadata"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray]

# detectron2's test-time default, used when a config has no test mapper augmentation.
_DEFAULT_TEST_RESIZE = dict(short_edge_length=800, max_size=1333)


def load_config(cfg_or_path: Any, opts: Sequence[str] = (), *, trust: bool = False) -> Any:
    """Loads a LazyConfig file (or takes a loaded one) and applies ``key=value`` overrides.

    Overrides are checked as train_net checks them: an unknown key (a typo) or a value of the
    wrong type raises ``ConfigError``; ``+key=value`` adds a new key on purpose. A saved YAML
    config may call only the allow-list's targets (:mod:`detrex_lite.config.trust`) unless
    ``trust`` is True.
    """
    if isinstance(cfg_or_path, (str, os.PathLike)):
        cfg = load_config_file(os.fspath(cfg_or_path), trust=trust)
    else:
        cfg = cfg_or_path
    if opts:
        cfg = apply_overrides_checked(cfg, list(opts))
    return cfg


def _build_model(cfg: Any, source: Optional[str]) -> torch.nn.Module:
    """``instantiate(cfg.model)``; for a config read from the file ``source``, a config that
    cannot build its model (no ``model``, a wrong argument or value) is a ConfigError naming the
    file (the original error chained), so that ``Predictor.from_run`` names the config.yaml at
    fault."""
    if source is None:
        return instantiate(cfg.model)
    if "model" not in cfg:
        raise ConfigError(f"{source}: has no 'model' to build (keys: {', '.join(map(str, cfg.keys())) or 'none'})")
    try:
        return instantiate(cfg.model)
    except (TypeError, ValueError, KeyError, AttributeError, ImportError, AssertionError, OmegaConfBaseException) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"{source}: cannot build its model ({type(e).__name__}: {reason})") from e


def test_augmentations(cfg: Any, meta: Optional[dict] = None) -> List[T.Augmentation]:
    """The test mapper's augmentations (``cfg.dataloader.test.mapper.augmentation``), built.

    Without a test mapper (e.g. a model-only config) the resize stored with the checkpoint
    (``meta["test_resize"]``) is used, else ``ResizeShortestEdge(800, max_size=1333)`` with a
    warning.
    """
    augs = OmegaConf.select(cfg, "dataloader.test.mapper.augmentation", default=None)
    if augs is None:
        resize = (meta or {}).get("test_resize")
        if resize:
            return [T.ResizeShortestEdge(resize["short_edge_length"], max_size=resize["max_size"])]
        logger.warning(
            "Config has no dataloader.test.mapper.augmentation; using ResizeShortestEdge(%s).",
            _DEFAULT_TEST_RESIZE,
        )
        return [T.ResizeShortestEdge(**_DEFAULT_TEST_RESIZE)]
    built = instantiate(augs)
    if isinstance(built, T.Augmentation):
        built = [built]
    return list(built)


def test_metadata(cfg: Any, meta: Optional[dict] = None):
    """Class names (and dataset ids) for drawing and JSON: the ones stored with the checkpoint
    (``meta``, so a fresh process needs no dataset registration), else the ``MetadataCatalog``
    entry of the first test dataset."""
    stored = ClassInfo.from_meta(meta or {})
    if stored is not None:
        return stored.to_metadata()
    # The demo datasets are registered: this module imports detrex_lite.data (for ClassInfo).
    names = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    if names is None:
        return MetadataCatalog.get("__unused")
    if not isinstance(names, str):
        names = list(names)[0]
    return MetadataCatalog.get(names)


def preprocess_image(image_rgb: np.ndarray, augmentations: T.AugmentationList) -> dict:
    """HxWx3 uint8 RGB -> model input dict: "image" (3, h, w) uint8 RGB after the test-time
    augmentations, "height"/"width" the original size (the size the model's boxes come back at)."""
    height, width = image_rgb.shape[:2]
    aug_input = T.AugInput(np.ascontiguousarray(image_rgb))
    augmentations(aug_input)
    resized = np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
    return {"image": torch.as_tensor(resized), "height": height, "width": width}


class Predictor:
    """Runs a detector built from a LazyConfig on single images or small lists of images.

    Weights are loaded with :func:`detrex_lite.checkpoint.load_weights` (purpose "predict"):
    strictly, the EMA weights when the config asks for them; a checkpoint of another class count
    or architecture (e.g. box refinement on/off) raises ``CheckpointMismatchError``.

    Args:
        cfg_or_path: a LazyConfig file path or an already loaded config.
        checkpoint: weights to load (a path or URL); ``None`` takes ``cfg.train.init_checkpoint``;
            ``""`` keeps the random initialisation.
        device: "cpu", "cuda", "cuda:1", ...; default: CUDA when available, else CPU.
        opts: ``key=value`` config overrides, applied before the model is built.
        input_format: channel order of numpy images given to ``__call__`` ("BGR" as OpenCV
            reads them, or "RGB"). Paths are always read correctly.
        precision: None runs the model as built (eager float32); "fp32" or "bf16" runs it
            through :func:`detrex_lite.inference.optimize_for_inference` (CPU only: frozen
            BatchNorm folded, channels_last, and for "bf16" bfloat16 weights and activations
            where the CPU has native bfloat16, else float32 with a warning).
        force_bf16: with ``precision="bf16"``, run bfloat16 even without native support.
        threshold: the score :meth:`detect` keeps from; None: the display threshold the
            checkpoint's last evaluation suggested (``meta["display_threshold"]``, max F1 at IoU
            0.5), else 0.3. ``predictor.threshold`` holds the value and where it came from.
        trust_config: let a saved ``config.yaml`` call any ``_target_``, not only those of the
            allow-list (:mod:`detrex_lite.config.trust`, docs/reliability.md); only for a file
            you trust.

    Example::

        predictor = Predictor("projects/deformable_detr/configs/deformable_detr_r50_50ep.py",
                              "output/model_final.pth")
        instances = predictor("image.jpg")  # pred_boxes (abs. xyxy, original size), scores, pred_classes
        found = predictor.detect("image.jpg")  # {"scores", "labels", "label_names", "boxes"} >= threshold
        predictor = Predictor.from_run("output/run")  # its config.yaml and model_best.pth (else newest)
    """

    def __init__(
        self,
        cfg_or_path: Any,
        checkpoint: Optional[str] = None,
        *,
        device: Optional[Union[str, torch.device]] = None,
        opts: Sequence[str] = (),
        input_format: str = "BGR",
        precision: Optional[str] = None,
        force_bf16: bool = False,
        threshold: Optional[float] = None,
        trust_config: bool = False,
    ):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
        self.cfg = load_config(cfg_or_path, opts, trust=trust_config)
        self.input_format = input_format
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        source = os.fspath(cfg_or_path) if isinstance(cfg_or_path, (str, os.PathLike)) else None
        self.model = _build_model(self.cfg, source).to(torch.device(device)).eval()

        if checkpoint is None:
            checkpoint = OmegaConf.select(self.cfg, "train.init_checkpoint", default=None) or ""
        self.checkpoint = checkpoint
        self.meta: dict = {}
        if checkpoint:
            self.meta = load_weights(self.model, checkpoint, purpose="predict", cfg=self.cfg).meta
        else:
            logger.warning("No checkpoint given (train.init_checkpoint is empty): random weights.")

        if precision is not None:
            if self.model.device.type != "cpu":
                raise ValueError(f"Predictor: precision={precision!r} is the CPU inference mode; the model is on {device}")
            from detrex_lite.inference import optimize_for_inference

            # A transformed copy; the built model is dropped (its weights held twice meanwhile).
            self.model = optimize_for_inference(self.model, precision, force_bf16=force_bf16)
        self.augmentations = T.AugmentationList(test_augmentations(self.cfg, self.meta))
        self.metadata = test_metadata(self.cfg, self.meta)
        self.threshold: ScoreThreshold = choose_threshold(threshold, self.meta, checkpoint, flag="Predictor(threshold=)")

    @classmethod
    def from_run(cls, run_dir: Union[str, os.PathLike], checkpoint: Optional[str] = None, *,
                 trust_config: bool = False, **kwargs: Any) -> "Predictor":
        """A predictor from a training output folder: its ``config.yaml`` and its ``model_best.pth``
        (the best evaluation's weights), else its newest complete checkpoint (or ``checkpoint``, a
        file name in the folder or a path). Works in a process that registered no dataset: class
        names come from the checkpoint's metadata.

        Args:
            trust_config: let the folder's ``config.yaml`` call any ``_target_`` (default: only
                the allow-list of :mod:`detrex_lite.config.trust`; others raise ``ConfigError``).
            kwargs: :class:`Predictor`'s keyword arguments (``device``, ``opts``,
                ``input_format``, ``precision``, ``force_bf16``, ``threshold``).
        """
        run_dir = os.fspath(run_dir)
        return cls(run_config_path(run_dir), find_run_checkpoint(run_dir, checkpoint), trust_config=trust_config,
                   **kwargs)

    @property
    def class_names(self) -> List[str]:
        """The class names, by contiguous class id (from the checkpoint or the test dataset)."""
        return list(getattr(self.metadata, "thing_classes", None) or [])

    def class_name(self, class_id: int) -> str:
        """The name of a contiguous class id (``"class <id>"`` when the names are unknown)."""
        names = self.class_names
        return names[class_id] if 0 <= class_id < len(names) else f"class {class_id}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def read(self, image: ImageLike) -> np.ndarray:
        """Returns the image as an HWC uint8 RGB array. Paths are read by the training reader
        (EXIF orientation; 16-bit images scaled to 8 bits; 32-bit float/int images refused with an
        ImageReadError naming the file)."""
        if isinstance(image, (str, os.PathLike)):
            return read_image_file(os.fspath(image), "RGB")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            got = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"Expected an image path or an HxWx3 uint8 array, got {got}")
        if image.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 image array, got dtype {image.dtype}")
        return image[:, :, ::-1] if self.input_format == "BGR" else image

    def preprocess(self, image_rgb: np.ndarray) -> dict:
        """One model input dict: the test-time resized RGB image and the original size."""
        return preprocess_image(image_rgb, self.augmentations)

    def predict(self, images: Iterable[ImageLike]) -> List[Instances]:
        """Batched inference. Returns one CPU ``Instances`` per image, at its original size."""
        return self.predict_rgb([self.read(image) for image in images])

    @torch.no_grad()
    def predict_rgb(self, images_rgb: Sequence[np.ndarray]) -> List[Instances]:
        """Batched inference on HxWx3 uint8 RGB arrays (skips the channel-order conversion)."""
        inputs = [self.preprocess(image) for image in images_rgb]
        if not inputs:
            return []
        outputs = self.model(inputs)
        return [out["instances"].to("cpu") for out in outputs]

    def __call__(self, image: ImageLike) -> Instances:
        """Inference on one image path or HxWx3 uint8 array (``input_format`` channel order):
        every detection the model returns (no threshold), as evaluation sees them."""
        return self.predict([image])[0]

    def detect(self, image: ImageLike, threshold: Optional[float] = None) -> Dict[str, Any]:
        """The detections of one image scoring at least ``threshold`` (default:
        ``self.threshold.value``), best first, with their class names::

            {"scores": (N,) float, "labels": (N,) int64 contiguous class ids,
             "label_names": [N class names], "boxes": (N, 4) absolute xyxy at the original size,
             "threshold": the threshold used}
        """
        return self.postprocess(self(image), threshold)

    def postprocess(self, instances: Instances, threshold: Optional[float] = None) -> Dict[str, Any]:
        """What :meth:`detect` returns, from one image's ``Instances``."""
        value = self.threshold.value if threshold is None else float(threshold)
        kept = instances[instances.scores >= value]
        kept = kept[torch.argsort(kept.scores, descending=True, stable=True)]
        labels = kept.pred_classes.to(torch.int64)
        return {"scores": kept.scores, "labels": labels, "label_names": [self.class_name(c) for c in labels.tolist()],
                "boxes": kept.pred_boxes.tensor, "threshold": value}
