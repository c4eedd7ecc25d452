"""The trained model shipped with nodulekit, ready without training: :func:`load_pretrained`.

``lidc_attention_unet/`` is a segmenter folder (``model.keras`` + ``preprocessing.json`` +
``segmenter.json``, see :func:`nodulekit.inference.load_segmenter`) trained on the 191 LIDC-IDRI
development patients; ``MODEL_CARD.md`` beside it says how, how well, and for what. LIDC-IDRI is
CC BY 3.0 (Armato et al., Med. Phys. 38:915-931, 2011; Clark et al., J Digit Imaging 26:1045-1057, 2013).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import InvalidParameterError
from ..model_names import SHIPPED_DIR as PRETRAINED_DIR
from ..model_names import resolve_model
from ..model_names import shipped_models as available_models

__all__ = ["load_pretrained", "PretrainedModel", "available_models", "PRETRAINED_DIR"]


class PretrainedModel:
    """A shipped model with its preprocessing, test-time augmentation and model card.

    Parameters
    ----------
    segmenter : nodulekit.inference.Segmenter
        The model and the exact preprocessing it was trained with.
    card : dict
        The model card's facts (``card.json``): data, protocol, cross-validated metrics.
    tta : bool
        Average the 8 flips/rotations of each crop in :meth:`predict` (as the card's numbers were measured).
    """

    def __init__(self, segmenter, card: dict, *, tta: bool = True):
        self.segmenter = segmenter
        self.card = card
        self.tta = bool(tta)

    def __repr__(self) -> str:
        return f"PretrainedModel({self.card.get('name', '?')}, window={self.segmenter.window}, tta={self.tta})"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Nodule probabilities for raw crops or slices, the same size as the input.

        Parameters
        ----------
        images : ndarray, shape (n, rows, columns) or (rows, columns)
            Raw crops exactly as a reader returns them: 8-bit LIDC PNG crops, HU, RGB (n, rows,
            columns, 3). Crops of the training size (64x64) are preprocessed exactly as in training
            (per-crop z-score); other sizes go through the whole-slice path of the segmenter.

        Returns
        -------
        ndarray of float32, shape (n, rows, columns) or (rows, columns)
        """
        images = np.asarray(images)
        if images.ndim not in (2, 3, 4):
            raise InvalidParameterError(f"images must have shape (n, rows, columns[, 3]) or (rows, columns), got {images.shape}")
        single = images.ndim == 2
        if single:
            images = images[np.newaxis]
        if images.ndim == 4:
            from ..preprocessing import to_grayscale

            images = to_grayscale()(images)
        images = images.astype(np.float32)
        window = self.segmenter.window
        if images.shape[1:] == (window, window):
            if self.tta:
                from ..postprocess import dihedral_tta

                out = dihedral_tta(self.segmenter.predict_crops, images)
            else:
                out = self.segmenter.predict_crops(images)
        else:
            out = self.segmenter.predict(images)
        return out[0] if single else out

    def predict_masks(self, images: np.ndarray) -> np.ndarray:
        """Binary masks (uint8) for crops: :meth:`predict`, then the card's threshold and the
        central-component post-processing (:func:`nodulekit.postprocess.postprocess`)."""
        from ..postprocess import postprocess

        probabilities = self.predict(images)
        threshold = float(self.card.get("threshold", 0.5))
        if probabilities.ndim == 2:
            return postprocess(probabilities[np.newaxis], threshold=threshold)[0]
        return postprocess(probabilities, threshold=threshold)

    def segment(self, *args, **kwargs):
        """Whole-scan segmentation: :meth:`nodulekit.inference.Segmenter.segment`."""
        return self.segmenter.segment(*args, **kwargs)


def load_pretrained(name: str | os.PathLike = "lidc_attention_unet", *, tta: bool = True, **overrides) -> PretrainedModel:
    """Load a model shipped with nodulekit (or any other model, with the same interface).

    Parameters
    ----------
    name : str or path
        One of :func:`available_models` (default: the Attention U-Net trained on LIDC-IDRI) or the
        alias ``"pretrained"``; or, like every model argument in nodulekit, a run folder, a
        ``.keras`` file or an exported folder (:func:`nodulekit.model_names.resolve_model`).
    tta : bool
        Test-time augmentation in :meth:`PretrainedModel.predict`.
    **overrides
        Segmenter options (``threshold``, ``mode``, ``overlap``) for whole-scan use.

    Returns
    -------
    PretrainedModel

    Raises
    ------
    MissingDataError
        When ``name`` is neither a shipped model nor an existing file or folder (the message lists
        the available names and the accepted forms).

    Examples
    --------
    >>> model = load_pretrained()  # doctest: +SKIP
    >>> probabilities = model.predict(crops.images)  # 64x64 uint8 LIDC crops  # doctest: +SKIP
    """
    from ..inference import load_segmenter

    source = resolve_model(name)
    card_file = source / "card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {"name": source.name}
    return PretrainedModel(load_segmenter(source, **overrides), card, tta=tta)
