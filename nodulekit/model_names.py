"""What a model argument may be, in one place: :func:`resolve_model`.

Every command and loader that takes a model (``nodulekit segment/evaluate/export``,
:func:`nodulekit.inference.load_segmenter`, :func:`nodulekit.load_pretrained`) accepts the same
forms, because each passes its argument through :func:`resolve_model`:

* the name of a model shipped inside the package (:func:`shipped_models`, e.g.
  ``lidc_attention_unet``), or the alias ``pretrained`` for the default one;
* a run folder written by ``nodulekit train`` (its best checkpoint and recorded preprocessing);
* a ``.keras`` file (a ``preprocessing.json`` beside it is used when present);
* a folder written by ``nodulekit export`` or :meth:`nodulekit.inference.Segmenter.save`.

A name is looked up first, so a folder that happens to carry a shipped model's name is given as a
path (``./lidc_attention_unet``). Weights are never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidParameterError, MissingDataError

__all__ = ["SHIPPED_DIR", "DEFAULT_MODEL", "ALIASES", "shipped_models", "accepted_forms", "resolve_model"]

#: Where the shipped models live: ``nodulekit/pretrained/<name>/`` (a segmenter folder each).
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"

#: The model used when none is named.
DEFAULT_MODEL = "lidc_attention_unet"

#: Other names of shipped models.
ALIASES = {"pretrained": DEFAULT_MODEL}


def shipped_models() -> list[str]:
    """Names of the models shipped with nodulekit (folders of :data:`SHIPPED_DIR` holding a ``segmenter.json``)."""
    return sorted(p.parent.name for p in SHIPPED_DIR.glob("*/segmenter.json"))


def accepted_forms() -> str:
    """One sentence listing what a model argument may be (for help texts and error messages)."""
    aliases = ", ".join(f"'{alias}' = {name}" for alias, name in ALIASES.items())
    return (
        f"a shipped model's name (available: {', '.join(shipped_models()) or 'none'}; alias {aliases}), "
        "a run folder of `nodulekit train`, a .keras file, or a folder written by `nodulekit export`"
    )


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """The file or folder a model argument names.

    Parameters
    ----------
    model : str, path or None
        A shipped model's name or alias (see :data:`ALIASES`), a run folder, a ``.keras`` file, or an
        exported / saved segmenter folder. ``None`` means the default shipped model
        (:data:`DEFAULT_MODEL`).

    Returns
    -------
    pathlib.Path
        The shipped model's folder, or ``model`` itself when it exists. Whether it holds a loadable
        model is checked by the loader (:func:`nodulekit.inference.load_segmenter`).

    Raises
    ------
    MissingDataError
        When ``model`` is neither a shipped name nor an existing file or folder; the message lists
        the accepted forms.
    InvalidParameterError
        When ``model`` is empty, or not a string or a path.

    Examples
    --------
    >>> resolve_model("pretrained").name
    'lidc_attention_unet'
    >>> resolve_model(None) == resolve_model("lidc_attention_unet")
    True
    """
    if model is None:
        model = DEFAULT_MODEL
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidParameterError(f"a model is a name or a path, got {type(model).__name__}: {accepted_forms()}")
    if isinstance(model, str):
        if not model.strip():
            raise InvalidParameterError(f"empty model name: a model is {accepted_forms()}")
        name = ALIASES.get(model, model)
        if name in shipped_models():
            return SHIPPED_DIR / name
    path = Path(model)
    if path.exists():
        return path
    raise MissingDataError(f"no such model file or folder, nor a shipped model; a model is {accepted_forms()}", path=path)
