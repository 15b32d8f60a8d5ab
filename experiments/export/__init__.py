"""Export to PyTorch / Hugging Face transformers: the writing half of interop.

`python -m experiments.export` (see `__main__`, `export_run`) writes a run as the exact
transformers class (`hf_export`) or as the repo's plain PyTorch modules (`torch_target`,
`torch_models/`), into a staged directory that appears only when complete (`output`). What
each objective family exports to, and how (name tables, mismatches, notes, its Hugging Face
targets), it declares once in `families/`. Tokenizer and HF side files: `tokenizer_files`,
`spm_fast`, `hf_files`. Reading checkpoints back is experiments/interop.
"""
