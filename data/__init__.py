"""Data: sources by name, tokenizers, tasks and the grain input pipeline.

`sources` (a registry: a spec string -> a random-access source of examples; the built-in
synthetic `shapes*` and `text_corpus`, `easy_vqa`, `fashion_mnist`, your own `user_pairs` /
`user_listing`, prepared tfds datasets through `tfds_source`), `tokenizer` (sentencepiece) and
`hf_tokenizer` (tokenizer.json), `tasks` (source fields -> model inputs: caption, prefix_lm,
vqa, text_only), `preprocess` (image ops), `pipeline` (deterministic, per-process sharded,
resumable batches), `mixing` (sources mixed by ratio), `paths` (local or gs://).
"""
