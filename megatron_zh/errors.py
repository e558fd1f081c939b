"""Error types the command-line tools turn into one clear line instead of a traceback.

Every message should say what is wrong, where (file, line, key), and what to do about it.
"""


class MegatronZhError(Exception):
    """Base of all errors raised deliberately by megatron_zh."""


class ConfigError(MegatronZhError, ValueError):
    """A configuration value, flag or combination of them is invalid."""


class DataFormatError(MegatronZhError, ValueError):
    """An input file (corpus, .bin/.idx, cache) is malformed, truncated or mismatched."""


class CheckpointError(MegatronZhError, ValueError):
    """A checkpoint is missing, incomplete, or does not match the model/vocab it is loaded into."""


class AssetFetchError(MegatronZhError, RuntimeError):
    """A default asset (vocab, corpus) could not be downloaded or failed its checksum."""
