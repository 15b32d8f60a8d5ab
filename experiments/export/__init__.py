"""Export to and import from PyTorch / Hugging Face transformers.

`python -m experiments.export` (see `__main__`) writes a run as the exact transformers class
(`hf_clip`: CLIPModel, `hf_siglip`: SiglipModel) or as the repo's plain PyTorch modules
(`torch_target`, `torch_models/`); `hf_import` reads CLIPModel / SiglipModel / BertModel
checkpoints as vlax towers. Every target is a name table in `mapping` (shared by both
directions) plus the checks that refuse a model the target cannot represent exactly.
"""
