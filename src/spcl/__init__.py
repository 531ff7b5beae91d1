"""spcl: self-paced contrastive learning with a hybrid memory for object re-ID (SpCL, NeurIPS 2020)."""

__version__ = "0.1.0"
