"""Pretrained checkpoints into vlax, and the name tables that export shares.

Used by training (`config.init.hf`), evaluation (`evaluate --hf`) and export alike, so it
sits below all three. `mapping` (Rule tables: one list per target serves both directions),
`hf_common` / `hf_clip` / `hf_siglip` / `hf_bert` (each transformers class: its name table,
its config in vlax terms and the options it cannot represent), `hf_import` (a transformers
directory read as vlax tower configs and params).
"""
