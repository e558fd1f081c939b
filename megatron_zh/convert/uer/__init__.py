"""UER-py GPT-2 model files (+ their config JSON), both ways.

0  names      UER-py's parameter names and config keys <-> ours; the LayerNorm difference
1  importer   a UER-py model file -> our model
1  exporter   a checkpoint -> a UER-py model file and config JSON
"""
