"""Images: class folders or tables of image files; RGB tensors resized, cropped and normalised as
the backbone's preprocessing says; Grad-CAM explanations; a picture gallery in the report.

Example::

    from finetunekit.modalities import modality_of
    image = modality_of("image")
    image.find_examples(Path("hymenoptera_data/train"), "image").labels[:2]   # ['ants', 'ants']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.readers import IMAGE_COLUMN_GUESSES, IMAGE_EXTENSIONS, RECIPE_COLUMN_OPTIONS, _read_image_folder, _read_image_table, check_images, is_table
from . import MODALITIES
from .base import FileInputs, InputSchema, Modality


@MODALITIES.register("image")
class Image(FileInputs, Modality):
    file_noun = "image"
    file_kind = "image"
    name = "image"
    threaded_images = True  # batch prediction decodes images in threads ahead of the model
    column_guesses = IMAGE_COLUMN_GUESSES
    file_extensions = frozenset(IMAGE_EXTENSIONS)
    request_field = "images"
    augments = blends = resizes = True
    # Chosen with benchmarks/strategies.py (docs/strategies.md): on small image sets a linear probe
    # (head at 1e-2, AdamW) beats every strategy that moves the backbone (ants/bees over seeds:
    # 0.967 against 0.930 for full fine-tuning, 0.951 for LoRA); the backbone rate (1e-5) applies
    # when another strategy trains the backbone.
    default_strategy = "linear_probe"
    train_defaults = {"epochs": 5, "batch_size": 16, "lr": 1e-5, "head_lr": 1e-2, "weight_decay": 0.01, "scheduler": "cosine",
                      "warmup_ratio": 0.0, "progressive_resize": 1.0}
    # LoRA: the image head keeps the linear probe's 1e-2; prototype: class means are computed once
    strategy_train_defaults = {"lora": {"lr": 1e-3, "head_lr": 1e-2}, "prototype": {"epochs": 1}}
    # The default linear probe reads the feature cache, so every trial costs seconds; its head
    # rate, regularisation, length and batch size are searched.
    search_space = {
        "train.head_lr": {"log_uniform": [1e-3, 1e-1]},
        "train.weight_decay": {"log_uniform": [1e-4, 1e-1]},
        "train.epochs": {"int": [3, 12]},
        "train.label_smoothing": {"uniform": [0.0, 0.2]},
        "train.batch_size": {"choice": [8, 16, 32]},
    }
    export_formats = ("timm", "onnx")
    feature_maps = True  # timm and bundled image backbones expose their stages
    onnx_axes = {"pixel_values": {0: "batch"}}
    fast_input = "pixels"
    zero_config_backbone = "bundled:efficientnet_lite0"
    report_errors = explained_errors = 24
    input_view = "gallery"
    explanation_note = ('<p class="note">Under each image, Grad-CAM of the predicted class: red is where the model found '
                        "its evidence.</p>")
    card_dataset_type = "imagefolder"
    card_example = '["path/to/image.jpg"]'

    def claims(self, path: Path) -> bool:
        return path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS

    def find_examples(self, path: Path, found: str, text_column: str | None = None, label_column: str | list[str] = "label",
                      require_labels: bool = True, text_columns: list[str] | None = None, image_column: str | None = None,
                      options: tuple[str, str] = RECIPE_COLUMN_OPTIONS, image_root: str | Path | None = None) -> Any:
        if is_table(path):
            return _read_image_table(path, image_column, label_column, require_labels, options, image_root, self.column_guesses)
        if found != self.name:
            raise self.mismatch(path, found)
        return _read_image_folder(path)

    def split_folders(self, root: Path) -> tuple[str, str] | None:
        if not (root / "train").is_dir():
            return None
        for name in ("val", "valid", "validation", "test"):
            if (root / name).is_dir():
                return str(root / "train"), str(root / name)
        return None

    def check_examples(self, examples: Any, data: Any) -> Any:
        return check_images(examples, data.bad_images, data.max_image_pixels)

    def run_preprocessing(self, backbone: Any, data: Any) -> dict[str, Any]:
        preprocessing = backbone.preprocessing()
        preprocessing["max_image_pixels"] = data.max_image_pixels  # predict and evaluate open images under the run's own limit
        return preprocessing

    def build_dataset(self, examples: Any, label_ids: Any, backbone: Any, preprocessing: dict, train: bool, augment: str,
                      max_length: int, task: Any = None, crop_scale: float = 0.25) -> Any:
        """A ``task`` with a joint transform (``task.transform``, dense tasks) transforms each image
        together with its raw target from ``label_ids``; ``crop_scale``: see ``image_transform``."""
        from ..data.pipeline import ImageDataset, image_transform

        joint = task.transform(preprocessing, train, augment) if task is not None else None
        if joint is not None:
            return ImageDataset(examples.inputs, label_ids, joint, preprocessing.get("max_image_pixels"), joint=True)
        transform = image_transform(preprocessing, train, augment, crop_scale)
        return ImageDataset(examples.inputs, label_ids, transform, preprocessing.get("max_image_pixels"))

    def encode(self, predictor: Any, items: Sequence[Any]) -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.stack([predictor.image_tensor(image) for image in items])}

    def item_sizes(self, items: Sequence[Any]) -> list[Any] | None:
        return [image.size for image in items]

    def load_item(self, item: Any) -> Any:
        from ..data.pipeline import open_image

        return open_image(item)

    def explanation(self, backbone: Any) -> dict[str, Any]:
        import torch

        if any(isinstance(m, torch.nn.Conv2d) for m in backbone.modules()):
            return {"method": "grad-cam", "over": "the last feature map"}
        return {"method": None, "reason": "Grad-CAM needs a convolutional backbone (feature maps); this one has none"}

    def card_input(self, recipe: Any) -> str:
        size = recipe.model.image_size
        return "RGB images, resized and centre-cropped" + (f" to {size} px" if size else " to the backbone's input size") + " (`preprocessing.json`)"

    def card_head(self, pooling: str) -> str:
        return "pooled features"

    def export_samples(self, saved: list[Any], schema: InputSchema, limit: int) -> list[Any] | None:
        inputs = [p for p in saved if Path(p).is_file()][:limit]
        return inputs if len(inputs) >= 3 else None

    def onnx_inputs(self, predictor: Any) -> str:
        return "pixel_values (N, 3, H, W) float32, normalised as in preprocessing.json"
