"""Conversions between our checkpoints and other model formats (Hugging Face GPT-2, UER-py).

Each format is a sub-package (or one module) with its name map, reader and writer; formats.py holds
the table of formats and the drivers around them, so a new format is its own module, one entry in
formats.FORMATS and one line here: tools/convert_checkpoint.py then takes it (--to/--from NAME).

  0  interface, flags   ExternalModel, ModelFormat (Importer, Exporter): what a format gives; the shared flags
  1  hf, uer            Hugging Face GPT-2 folders; UER-py model files (each its own map)
  2  formats            FORMATS, read_model, import_model, export_checkpoint
  3  loading, commands  a model and its tokenizer from a checkpoint or a readable format; the tools' bodies
"""
