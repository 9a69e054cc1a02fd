"""Dataset constants shared by the model configs and the data pipeline."""

# CIFAR-10 training-set channel statistics (the values in common use, on the lossless pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

# The Hugging Face organisation the zoo publishes under: repos are '<HUB_ORG>/<model>.<tag>'.
HUB_ORG = 'xsep-zoo'
