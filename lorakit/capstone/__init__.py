"""The capstone (notebook 11): MiniLM-L6, a real pretrained encoder, on real human labels, with every method.

* :mod:`~lorakit.capstone.lexicon`: the VADER lexicon (7,520 tokens, ten human valence ratings each), its fixed
  splits, and the raters' own agreement (the human ceiling);
* :mod:`~lorakit.capstone.model`: MiniLM-L6 + mean pooling + a linear head that predicts valence;
* :mod:`~lorakit.capstone.arms`: the methods (probe, full fine-tuning, LoRA, rsLoRA, PiSSA, DoRA, AdaLoRA,
  QLoRA on NF4/FP4/INT4, IA3, VeRA, LoRA+, BitFit, prompt tuning, adapters) and their lr grids;
* :mod:`~lorakit.capstone.run`: one seeded run and what it measures;
* :mod:`~lorakit.capstone.analyses`: the papers' analyses in miniature (subspace similarity, amplification,
  spectra, magnitude/direction, rank allocation) and the tables' summaries.

``scripts/capstone.py`` runs everything into ``data/results/capstone*.json`` (``make results``).
"""

from lorakit.capstone.arms import ARMS, Arm, arms_for, lora_arm, qlora_arm, quantized_base_arm, targets_regex
from lorakit.capstone.lexicon import Lexicon, LexiconSplits, human_ceiling, lexicon_splits, load_lexicon, pearson
from lorakit.capstone.model import SCALE, Encoded, ValenceModel, embeddings, encode_tokens, evaluate, predict
from lorakit.capstone.run import CapstoneConfig, CapstoneData, build_model, capstone_data, run_arm

__all__ = [
    "ARMS", "SCALE", "Arm", "CapstoneConfig", "CapstoneData", "Encoded", "Lexicon", "LexiconSplits", "ValenceModel",
    "arms_for", "build_model", "capstone_data", "embeddings", "encode_tokens", "evaluate", "human_ceiling",
    "lexicon_splits", "load_lexicon", "lora_arm", "pearson", "predict", "qlora_arm", "quantized_base_arm", "run_arm",
    "targets_regex",
]
