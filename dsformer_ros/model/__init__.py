"""The DSFormer network: backbones, dual-scale transformer with iRPE, checkpoints (strict, data only), pretrained
backbones, loading.
"""
