"""Conversions between our checkpoints and other model formats (Hugging Face GPT-2, UER-py).

Each format is a sub-package with its name map, its reader and its writer; formats.py holds the
table of formats and the drivers around them, so a new format is a sub-package and one entry.

  0  interface, flags   ExternalModel and ModelFormat: what a format gives; the tools' shared flags
  1  hf, uer            Hugging Face GPT-2 folders; UER-py model files (each its own map)
  2  formats            FORMATS, read_model, import_model, export_checkpoint
  3  loading            a model and its tokenizer from a checkpoint or a readable format
"""
