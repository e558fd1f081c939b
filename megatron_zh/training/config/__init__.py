"""What a run is told: a ds_configs JSON file (DeepSpeed's sections + our "pretrain" block) and flags.

0  train_config         TrainConfig: the "pretrain" block, one knob per field; reading the file
1  run_config           RunConfig: the pretrain block, the model and the DeepSpeed dict, resolved
1  deepspeed_config     the DeepSpeed half made complete: batch sizes, lr schedule, precision
1  deepspeed_preflight  what deepspeed.initialize would reject, found before anything starts
2  arguments            pretrain_gpt.py's command line: flags derived from the knobs, over the file
"""
