"""Package a model trained by experiments/real_ct.py --final as nodulekit's shipped segmenter folder.

    python experiments/ship_pretrained.py experiments/results/pretrained_bn_aug.keras \
        experiments/results/pretrained_bn_aug.json nodulekit/pretrained/lidc_attention_unet
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(model_file: str, recipe_file: str, folder: str, cv_summary: str | None = None) -> None:
    from nodulekit.evaluation import Recipe
    from nodulekit.inference import Segmenter
    from nodulekit.safety import load_model
    from nodulekit.utils import write_json

    info = json.loads(Path(recipe_file).read_text())
    recipe = Recipe.from_dict(info["recipe"])
    metadata = {"recipe": recipe.to_dict(), "training_patients": len(info["patients"]), "data": "LIDC-IDRI PNG release, 64x64 centre crops, 50 % consensus"}
    segmenter = Segmenter(load_model(model_file), recipe.pipeline(), window=64, units="uint8", threshold=recipe.threshold, metadata=metadata)
    segmenter.save(folder)
    card = {"name": Path(folder).name, "threshold": recipe.threshold, "recipe": recipe.to_dict(), "training_patients": len(info["patients"]),
            "licence": "weights derived from LIDC-IDRI (CC BY 3.0): attribute Armato et al. 2011 and Clark et al. 2013"}
    if cv_summary:
        card["cross_validation"] = json.loads(Path(cv_summary).read_text())
    write_json(Path(folder) / "card.json", card)
    print(f"shipped {model_file} -> {folder}")


if __name__ == "__main__":
    main(*sys.argv[1:])
