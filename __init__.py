"""worldclip: a Ray-native MetaCLIP 2 platform (curation on Ray Data, training on Ray Train +
DeepSpeed ZeRO, threshold sweeps on Ray Tune)."""

__version__ = "0.1.0"
