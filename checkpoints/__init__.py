"""Checkpoints that ship with cimexp, installed as the package ``cimexp.checkpoints``: the float ResNet-20 on
CIFAR-10 that the fine-tuning recipes start from (``${cimexp.shipped:resnet20_cifar10_float.pt}`` in the configs).
"""
